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


def test_a_dataset_the_encoder_refuses_is_a_derive_error():
    """A value copied from a malformed source must refuse that object, not crash the run."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", "2.25.1"
    ds.add_new(0x00081010, "OB", "text where bytes belong")
    with pytest.raises(DeriveError, match="cannot be encoded"):
        encode_dataset(ds)
