"""The C-STORE handler in-process, through the three event attributes it reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.scp import Receiver
from tests.hostile.corpus import CT_STORAGE, MR_STORAGE, base, cut, mr, part10
from tests.hostile.harness import SpoolChecker, status_of, store_event


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    result = Receiver(tmp_path, min_free_disk_mb=0)
    yield result
    result.close()


def test_a_good_instance_is_stored_byte_for_byte(receiver: Receiver, tmp_path: Path):
    part = base("scp_good")
    assert status_of(receiver.handle_store(store_event(part))) == 0x0000
    (stored,) = (tmp_path / "spool" / "series").rglob("*.dcm")
    data = stored.read_bytes()
    # The dataset exactly as received, behind the node's own Part 10 header.
    assert data.endswith(part.dataset) and data[128:132] == b"DICM"
    assert SpoolChecker(tmp_path).problems() == []


def test_a_truncated_instance_is_refused_and_nothing_is_kept(receiver: Receiver,
                                                             tmp_path: Path):
    part = base("scp_truncated")
    result = receiver.handle_store(store_event(cut(part, len(part.data) - 1000)))
    assert status_of(result) == 0xC210
    assert "claims" in result.ErrorComment and len(result.ErrorComment) <= 64
    assert not list((tmp_path / "spool").rglob("*.dcm"))


def test_sop_class_differing_from_the_request_is_a900(receiver: Receiver):
    """As DCMTK's storescp does: the dataset must be what the request says it is."""
    part = part10(mr("scp_class", SOPClassUID=CT_STORAGE), sop_class=MR_STORAGE)
    result = receiver.handle_store(store_event(part))
    assert status_of(result) == 0xA900
    assert result.ErrorComment.startswith("SOPClassUID differs")
