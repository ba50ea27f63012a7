"""The status page's pieces (dicomnode.status_page); the page itself, in a browser against a
running node, is tests/node/test_status_page.py."""

from __future__ import annotations

from dicomnode.status_page import is_phi


def test_patient_attributes_count_as_phi() -> None:
    assert is_phi("PatientName") and is_phi("OtherPatientIDsSequence")
    assert is_phi("AccessionNumber") and not is_phi("Modality")
