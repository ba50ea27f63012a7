"""Safe names and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicomnode.errors import DeriveError
from dicomnode.files import atomic_write_bytes, encode_dataset, safe_name


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.4", "2.25.1234567890"])
def test_valid_uids_are_kept(uid: str):
    assert safe_name(uid) == uid


@pytest.mark.parametrize("hostile", ["../../x", "/etc/passwd", "..", "a/b\\\\c", "", "x" * 300,
                                     "1.2.3/../../4", "\x00", "ü.1"])
def test_hostile_values_cannot_leave_the_folder(tmp_path: Path, hostile: str):
    name = safe_name(hostile)
    assert "/" not in name and "\\\\" not in name and name not in ("", ".", "..")
    assert len(name) <= 64
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_different_hostile_values_never_share_a_name():
    assert safe_name("../x") != safe_name("__/x") != safe_name("../x ")


def test_atomic_write_leaves_no_partial_file(tmp_path: Path):
    target = tmp_path / "a" / "file.dcm"
    atomic_write_bytes(target, b"data", tmp_dir=tmp_path)
    assert target.read_bytes() == b"data"
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_part10_header_reads_back_with_pydicom():
    import io

    import pydicom

    from dicomnode import IMPLEMENTATION_CLASS_UID
    from dicomnode.files import part10_header
    from tests.conftest import MR_DIR

    source = sorted(MR_DIR.glob("*.dcm"))[0]
    reference = pydicom.dcmread(source)
    raw = source.read_bytes()
    dataset_bytes = raw[132 + 12 + reference.file_meta.FileMetaInformationGroupLength:]
    header = part10_header(reference.SOPClassUID, reference.SOPInstanceUID,
                           "1.2.840.10008.1.2.1", "MODALITY")
    ds = pydicom.dcmread(io.BytesIO(header + dataset_bytes))
    meta = ds.file_meta
    assert meta.MediaStorageSOPInstanceUID == reference.SOPInstanceUID
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert meta.SourceApplicationEntityTitle == "MODALITY"
    assert meta.FileMetaInformationGroupLength == len(header) - 128 - 4 - 12
    assert (ds.pixel_array == reference.pixel_array).all()


def test_a_dataset_the_encoder_refuses_is_a_derive_error():
    """A value copied from a malformed source must refuse that object, not crash the run."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", "2.25.1"
    ds.add_new(0x00081010, "OB", "text where bytes belong")
    with pytest.raises(DeriveError, match="cannot be encoded"):
        encode_dataset(ds)
