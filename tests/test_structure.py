"""The C-STORE path's Part 10 place: the structure walk (every byte a dataset announces must
be there), the file meta written in front of a received dataset, the header the index reads."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest

from dicomnode.errors import InputRejected
from dicomnode.structure import check_part10, parse_header
from tests.conftest import DATA, MR_DIR
from tests.hostile.corpus import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    _nested,
    base,
    explicit_element,
    insert_before,
    locate,
    mr,
    part10,
    splice,
)

ALL_FILES = sorted(DATA.glob("*/*.dcm"))


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_file_passes(path: Path):
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    check_part10(path.read_bytes(), syntax)


def test_a_cut_inside_any_element_is_found():
    part = base("structure_cut")
    pixel = locate(part, 0x7FE00010)
    private = locate(part, 0x00291020)
    sequence = locate(part, 0x00081140)
    for at in (pixel.value_start + 1, pixel.value_start + pixel.length // 2, len(part.data) - 1,
               private.value_start + 100, sequence.value_start + 12, pixel.start + 5):
        with pytest.raises(InputRejected, match="malformed dataset"):
            check_part10(part.data[:at], EXPLICIT_LE)


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("claims_4gb", lambda p: splice(p, locate(p, 0x7FE00010).value_start - 4,
                                        locate(p, 0x7FE00010).value_start,
                                        struct.pack("<L", 0xFFFFFFF0)),
         r"\(7FE0,0010\) claims 4294967280 bytes"),
        ("unknown_vr", lambda p: insert_before(p, 0x00100010, explicit_element(
            0x0009, 0x0010, "ZZ", b"AB")), "unknown VR b'ZZ'"),
        ("odd_us", lambda p: insert_before(p, 0x00100010, explicit_element(
            0x0009, 0x1001, "US", b"abc")), r"\(US\) has length 3, not a multiple of 2"),
        ("meta_in_dataset", lambda p: splice(p, p.dataset_offset, p.dataset_offset,
                                             explicit_element(0x0002, 0x0010, "UI", b"1.2\x00")),
         r"File Meta \(0002,xxxx\) element inside the dataset"),
        ("nested", lambda p: splice(p, locate(p, 0x00081140).start,
                                    locate(p, 0x00081140).value_start
                                    + locate(p, 0x00081140).length, _nested(200)),
         "nested deeper than 64"),
        ("text_undefined_length", lambda p: insert_before(p, 0x00100010, struct.pack(
            "<HH2sHL", 0x0009, 0x1002, b"UT", 0, 0xFFFFFFFF)), r"\(UT\) has undefined length"),
    ],
)
def test_lying_structure_is_refused_naming_the_element(name, edit, message):
    part = edit(base(f"structure_{name}"))
    with pytest.raises(InputRejected, match=message):
        check_part10(part.data, EXPLICIT_LE)


def test_trailing_zero_padding_and_implicit_vr_are_accepted():
    part = base("structure_padding")
    check_part10(part.data + bytes(10), EXPLICIT_LE)
    implicit = part10(mr("structure_implicit"), transfer_syntax=IMPLICIT_LE)
    check_part10(implicit.data, IMPLICIT_LE)
    with pytest.raises(InputRejected):
        check_part10(implicit.data[:-3], IMPLICIT_LE)


def test_un_of_undefined_length_is_walked_as_implicit_items():
    """PS3.5 6.2.2: a sequence re-encoded as UN keeps Implicit VR Little Endian items."""
    item = struct.pack("<HHL", 0x0008, 0x1150, 4) + b"1.2\x00"
    un = (struct.pack("<HH2sHL", 0x0009, 0x1003, b"UN", 0, 0xFFFFFFFF)
          + struct.pack("<HHL", 0xFFFE, 0xE000, len(item)) + item
          + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    part = insert_before(base("structure_un"), 0x00100010, explicit_element(
        0x0009, 0x0010, "LO", b"HOSTILE ") + un)
    check_part10(part.data, EXPLICIT_LE)


def test_part10_header_reads_back_with_pydicom():
    import io

    import pydicom

    from dicomnode import IMPLEMENTATION_CLASS_UID
    from dicomnode.structure import part10_header
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


def test_parse_header_reads_only_what_the_index_needs():
    header = parse_header(sorted(MR_DIR.glob("*.dcm"))[0].read_bytes())
    assert header.modality == "MR" and header.series_uid.endswith(".0.0.0")
    assert header.transfer_syntax == "1.2.840.10008.1.2.1"
    with pytest.raises(InputRejected, match=r"cannot be parsed|missing"):
        parse_header(b"DICM" + b"\x00" * 10)


def _real_files() -> list[Path]:
    """Every real Part 10 file at hand: the test series and pydicom's own test files."""
    import pydicom.data

    data = Path(__file__).parent / "data"
    pydicom_files = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(data.rglob("*.dcm")) + sorted(pydicom_files.glob("*.dcm"))


def test_the_walk_reads_the_same_header_as_pydicom():
    """parse_header takes its values from the structure walk (4x cheaper); pydicom's reader
    stays for what the walk cannot read. Both must agree wherever both answer."""
    from dicomnode.structure import _header_from_pydicom, _header_from_walk

    compared = 0
    for path in _real_files():
        data = path.read_bytes()
        try:
            walked = _header_from_walk(data)
        except InputRejected as exc:
            walked = f"refused: {exc}"
        if walked is None:
            continue  # no file meta or deflated: pydicom reads it
        try:
            expected = _header_from_pydicom(data)
        except InputRejected as exc:
            expected = f"refused: {exc}"
        assert (walked == expected) or (isinstance(walked, str) and isinstance(expected, str)), \
            path.name
        compared += 1
    assert compared > 100


def test_odd_uids_are_read_as_pydicom_reads_them():
    """A backslash (several values) or binary bytes: the walk hands over to pydicom, so the
    index, the C-STORE request's decoded UID and the worker's reader all agree."""
    from dicomnode.structure import _header_from_pydicom, _header_from_walk
    from tests.hostile.corpus import CASES, mr, part10

    part = part10(mr("walk_backslash", SOPInstanceUID="..\\..\\windows\\x"))
    assert _header_from_walk(part.data) is None
    assert parse_header(part.data) == _header_from_pydicom(part.data)
    (binary,) = CASES["wrong_vr_series_uid_binary"].payload.files
    assert _header_from_walk(binary.data) is None
    assert parse_header(binary.data).series_uid == _header_from_pydicom(binary.data).series_uid
