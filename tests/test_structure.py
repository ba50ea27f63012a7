"""The receiver's structure walk: every byte a dataset announces must be there."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest

from dicomnode.errors import InputRejected
from dicomnode.structure import check_part10
from tests.conftest import DATA
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
