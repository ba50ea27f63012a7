"""The hostile-input corpus: one small function per case, generated from tests/data.

Each case returns a ``Payload``: Part 10 files (what a modality or a folder would hold, with
the C-STORE request fields and transfer syntax to send them under) and/or a raw network
scenario played byte by byte against the node's port. ``@case`` records what the node should
answer (``net``), what becomes of the stored series (``job``) and what ``dicomnode enhance``
says about the files (``enhance``); each expectation is a list of substrings of the outcome.

Nothing here is stored as a binary file: every case is rebuilt from the real test data.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import random
import socket
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID

from tests.hostile import dul

DATA = Path(__file__).resolve().parent.parent / "data"
MR_DIR = DATA / "mr_siemens_prisma_t1_fl2d_sag_35sl"
TS_DIR = DATA / "ts_mr_siemens_trio_9syntaxes"
CODEC_DIR = DATA / "codec_singles"
ENHANCED_MR_DIR = DATA / "mr_siemens_prisma_xa30_t1_tfl_enhanced_96fr"

UID_ROOT = "1.2.826.0.1.3680043.10.6"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"

# Expected outcomes (substrings of what the harness observes).
OK = "0x0000"
CANNOT_UNDERSTAND = "0xC210"
MISMATCH = "0xA900"
DERIVED = "derived"

_LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


@dataclass(frozen=True)
class Part10:
    """A DICOM file, plus what a C-STORE of it says (request UIDs, presentation context)."""

    name: str
    data: bytes
    sop_class: str
    sop_uid: str | None
    series_uid: str | None
    transfer_syntax: str = EXPLICIT_LE
    dataset_offset: int = 0

    @property
    def dataset(self) -> bytes:
        """The bytes a C-STORE carries: the file without preamble and file meta."""
        return self.data[self.dataset_offset:]


RawScenario = Callable[[int], str]


@dataclass(frozen=True)
class Payload:
    files: tuple[Part10, ...] = ()
    raw: RawScenario | None = None
    network: bool = True   # the files are sent over the network too
    enhance: bool = True   # the files are fed to ``dicomnode enhance`` too


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    build: Callable[[], Payload]
    net: tuple[str, ...] = ()
    job: tuple[str, ...] | None = None
    enhance: tuple[str, ...] | None = None
    watch_memory: bool = False

    @property
    def payload(self) -> Payload:
        return _built(self.name)


CASES: dict[str, Case] = {}


def case(net: str | tuple[str, ...] = (), job: str | tuple[str, ...] | None = None,
         enhance: str | tuple[str, ...] | None = None, watch_memory: bool = False
         ) -> Callable[[Callable[[], Payload]], Callable[[], Payload]]:
    """Register a case under its function name; the docstring's first line says what it is."""
    def as_tuple(value: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
        return (value,) if isinstance(value, str) else value

    def register(build: Callable[[], Payload]) -> Callable[[], Payload]:
        what = (build.__doc__ or build.__name__).strip().splitlines()[0]
        CASES[build.__name__] = Case(build.__name__, what, build, as_tuple(net) or (),
                                     as_tuple(job), as_tuple(enhance), watch_memory)
        return build
    return register


@cache
def _built(name: str) -> Payload:
    return CASES[name].build()


# -- building blocks -------------------------------------------------------------------------

def uid(case_name: str, kind: str, index: int = 0) -> str:
    """A stable UID per case (adding a case never changes another case's UIDs)."""
    number = int(hashlib.sha256(case_name.encode()).hexdigest()[:12], 16)
    return f"{UID_ROOT}.{kind}.{number}.{index}"


@contextlib.contextmanager
def lenient() -> Iterator[None]:
    """Let pydicom write invalid values: that is the point of this corpus."""
    settings = pydicom_config.settings
    previous = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = previous


@cache
def _template_bytes(path: Path) -> bytes:
    return path.read_bytes()


def good_mr_paths() -> list[Path]:
    return sorted(MR_DIR.glob("*.dcm"))


def source(path: Path) -> Dataset:
    with lenient():
        return pydicom.dcmread(_as_file(_template_bytes(path)))


def _as_file(data: bytes) -> DicomBytesIO:
    return DicomBytesIO(data)


def mr(name: str, index: int = 0, slice_number: int = 15, **changes: object) -> Dataset:
    """A real MR slice moved into the case's own series, with ``changes`` (None deletes)."""
    ds = source(good_mr_paths()[slice_number])
    ds.SeriesInstanceUID = uid(name, "1")
    ds.SOPInstanceUID = uid(name, "2", index)
    ds.SeriesDescription = f"hostile {name}"[:64]
    set_values(ds, changes)
    return ds


def set_values(ds: Dataset, changes: dict[str, object]) -> None:
    """Set (None: delete) attributes; values pydicom cannot even hold are stored as raw text."""
    with lenient():
        for keyword, value in changes.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
                continue
            try:
                setattr(ds, keyword, value)
            except (ValueError, TypeError, OverflowError):
                tag = Tag(keyword)
                text = "\\".join(value) if isinstance(value, list) else str(value)
                raw = text.encode("latin-1")
                raw += b" " * (len(raw) % 2)
                ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)


def small_mr(name: str, index: int = 0, size: int = 32) -> Dataset:
    """A valid MR slice of ``size`` x ``size`` without private groups (a few KB)."""
    ds = copy.deepcopy(_small_template(size))
    ds.SeriesInstanceUID = uid(name, "1")
    ds.SOPInstanceUID = uid(name, "2", index)
    ds.SeriesDescription = f"hostile {name}"[:64]
    return ds


@cache
def _small_template(size: int) -> Dataset:
    ds = mr("small template")
    ds.remove_private_tags()
    pixels = ds.pixel_array[:: 256 // size, :: 256 // size].astype(np.uint16)
    ds.Rows = ds.Columns = size
    ds.PixelData = pixels.tobytes()
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def part10(ds: Dataset, name: str = "", transfer_syntax: str = EXPLICIT_LE,
           meta_transfer_syntax: str | None = None, sop_class: str | None = None,
           sop_uid: str | None = None, send_as: str | None = None) -> Part10:
    """Encode ``ds`` as a Part 10 file under ``transfer_syntax``.

    ``meta_transfer_syntax`` writes a different (lying) Transfer Syntax UID in the file meta;
    ``sop_class``/``sop_uid`` override what the C-STORE request says; ``send_as`` is the
    presentation context's transfer syntax (defaults to the meta's).
    """
    syntax = UID(transfer_syntax)
    request_class = sop_class or str(ds.get("SOPClassUID", "") or MR_STORAGE)
    request_uid = sop_uid if sop_uid is not None else str(ds.get("SOPInstanceUID", "") or "")
    fp = DicomBytesIO()
    fp.write(bytes(128) + b"DICM")
    with lenient():
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = request_class
        meta.MediaStorageSOPInstanceUID = request_uid or "1.2"
        if meta_transfer_syntax != "":
            meta.TransferSyntaxUID = meta_transfer_syntax or transfer_syntax
        meta.ImplementationClassUID = dul.IMPLEMENTATION_UID
        # A standard meta (group length, version) unless the case wants it broken.
        write_file_meta_info(fp, meta, enforce_standard="TransferSyntaxUID" in meta)
        offset = fp.tell()
        body = DicomBytesIO()
        body.is_little_endian = syntax.is_little_endian if syntax.is_transfer_syntax else True
        body.is_implicit_VR = syntax.is_implicit_VR if syntax.is_transfer_syntax else False
        write_dataset(body, ds)
    encoded = body.getvalue()
    if syntax == DEFLATED:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        encoded = compressor.compress(encoded) + compressor.flush()
    series = ds.get("SeriesInstanceUID")
    return Part10(
        name=name or "instance.dcm", data=fp.getvalue() + encoded, sop_class=request_class,
        sop_uid=request_uid or None, series_uid=str(series) if series else None,
        transfer_syntax=send_as or meta_transfer_syntax or transfer_syntax,
        dataset_offset=offset,
    )


def one(ds: Dataset, name: str = "", **kwargs: object) -> Payload:
    return Payload(files=(part10(ds, name or "instance.dcm", **kwargs),))  # type: ignore[arg-type]


@dataclass(frozen=True)
class Element:
    """Where a top-level element lies in a Part 10 file."""

    start: int
    value_start: int
    length: int


def locate(part: Part10, tag: int) -> Element:
    """The byte offsets of top-level element ``tag`` in ``part`` (read without decoding)."""
    with lenient():
        ds = pydicom.dcmread(_as_file(part.data), defer_size=None)
        raw = ds.get_item(Tag(tag))
    assert raw is not None and hasattr(raw, "value_tell"), f"{Tag(tag)} not in {part.name}"
    implicit = UID(part.transfer_syntax).is_implicit_VR if UID(
        part.transfer_syntax).is_transfer_syntax else False
    header = 8 if implicit or raw.VR not in _LONG_LENGTH_VRS else 12
    return Element(raw.value_tell - header, raw.value_tell, raw.length)


def cut(part: Part10, at: int, name: str | None = None) -> Part10:
    return replace(part, data=part.data[:at], name=name or part.name)


def splice(part: Part10, start: int, end: int, new: bytes) -> Part10:
    return replace(part, data=part.data[:start] + new + part.data[end:])


def explicit_element(group: int, element: int, vr: str, value: bytes,
                     length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element, with a ``length`` that may lie."""
    size = len(value) if length is None else length
    if vr in _LONG_LENGTH_VRS:
        return struct.pack("<HH2sHL", group, element, vr.encode(), 0, size) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), size) + value


def insert_before(part: Part10, tag: int, data: bytes) -> Part10:
    at = locate(part, tag).start
    return splice(part, at, at, data)


def base(name: str, **changes: object) -> Part10:
    return part10(mr(name, **changes), f"{name}.dcm")


def pixel_tag() -> int:
    return 0x7FE00010


def garble(data: bytes, seed: int, count: int = 64) -> bytes:
    """Overwrite ``count`` bytes in the middle of ``data`` with seeded random bytes."""
    rng = random.Random(seed)
    middle = len(data) // 2
    noise = bytes(rng.randrange(256) for _ in range(count))
    return data[:middle] + noise + data[middle + count:]


def compressed_mr(name: str, file_name: str, **changes: object) -> Dataset:
    """One of the 9-syntax MR files moved into the case's series (pixels kept as encoded)."""
    ds = source(TS_DIR / file_name)
    ds.SeriesInstanceUID = uid(name, "1")
    ds.SOPInstanceUID = uid(name, "2")
    set_values(ds, changes)
    return ds


def encoded(name: str, file_name: str, pixel_data: bytes | None = None) -> Payload:
    ds = compressed_mr(name, file_name)
    if pixel_data is not None:
        ds.PixelData = pixel_data
    return one(ds, f"{name}.dcm", transfer_syntax=str(ds.file_meta.TransferSyntaxUID))


def patched_codestream(name: str, file_name: str, marker: bytes, offset: int, fmt: str,
                       values: tuple[int, ...]) -> Payload:
    """Rewrite fields of the first ``marker`` segment of the codestream (its frame header)."""
    ds = compressed_mr(name, file_name)
    pixels = bytearray(ds.PixelData)
    at = pixels.find(marker)
    assert at > 0, f"no {marker.hex()} in {file_name}"
    struct.pack_into(fmt, pixels, at + offset, *values)
    ds.PixelData = bytes(pixels)
    return one(ds, f"{name}.dcm", transfer_syntax=str(ds.file_meta.TransferSyntaxUID))


# == A. Truncated files ========================================================================
# The node parses only up to SeriesInstanceUID when receiving; a dataset cut after that point
# must still be answered with a failure, because the bytes the sender meant never all arrived.

@case(enhance="skipped: not a DICOM Part 10 file")
def truncated_in_preamble() -> Payload:
    """File cut 100 bytes in, inside the 128-byte preamble."""
    return Payload(files=(cut(base("truncated_in_preamble"), 100),), network=False)


@case(enhance="skipped")
def truncated_in_file_meta() -> Payload:
    """File cut in the middle of the File Meta Information group."""
    return Payload(files=(cut(base("truncated_in_file_meta"), 170),), network=False)


@case(net=CANNOT_UNDERSTAND, enhance="skipped: SeriesInstanceUID is missing")
def truncated_after_file_meta() -> Payload:
    """File meta and nothing else: the dataset is empty."""
    part = base("truncated_after_file_meta")
    return Payload(files=(cut(part, part.dataset_offset),))


@case(net=CANNOT_UNDERSTAND, enhance="skipped")
def truncated_in_element_header() -> Payload:
    """Cut three bytes into the SOP Instance UID element's header."""
    part = base("truncated_in_element_header")
    return Payload(files=(cut(part, locate(part, 0x00080018).start + 3),))


@case(net=CANNOT_UNDERSTAND, enhance="skipped: SeriesInstanceUID is missing")
def truncated_before_series_uid() -> Payload:
    """Cut just before Series Instance UID."""
    part = base("truncated_before_series_uid")
    return Payload(files=(cut(part, locate(part, 0x0020000E).start),))


@case(net=CANNOT_UNDERSTAND, enhance="refused: no Pixel Data")
def truncated_in_series_uid_value() -> Payload:
    """Cut in the middle of the Series Instance UID value (a shorter, different UID)."""
    part = base("truncated_in_series_uid_value")
    element = locate(part, 0x0020000E)
    return Payload(files=(cut(part, element.value_start + element.length // 2),))


@case(net=CANNOT_UNDERSTAND, enhance="skipped")
def truncated_in_sequence() -> Payload:
    """Cut inside the Referenced Image Sequence (an item left open)."""
    part = base("truncated_in_sequence")
    element = locate(part, 0x00081140)
    return Payload(files=(cut(part, element.value_start + 30),))


@case(net=CANNOT_UNDERSTAND, enhance="refused")
def truncated_in_private_block() -> Payload:
    """Cut inside the 120 KB Siemens CSA private element, after the UIDs."""
    part = base("truncated_in_private_block")
    element = locate(part, 0x00291020)
    return Payload(files=(cut(part, element.value_start + element.length // 2),))


@case(net=CANNOT_UNDERSTAND, enhance="refused: no Pixel Data")
def truncated_in_pixel_data_header() -> Payload:
    """Cut inside the Pixel Data element's header (tag and VR only)."""
    part = base("truncated_in_pixel_data_header")
    return Payload(files=(cut(part, locate(part, pixel_tag()).start + 6),))


@case(net=CANNOT_UNDERSTAND, enhance="refused")
def truncated_in_pixel_data_start() -> Payload:
    """Cut 10 bytes into the Pixel Data value."""
    part = base("truncated_in_pixel_data_start")
    return Payload(files=(cut(part, locate(part, pixel_tag()).value_start + 10),))


@case(net=CANNOT_UNDERSTAND, enhance="refused")
def truncated_in_pixel_data_half() -> Payload:
    """Cut half way through Pixel Data."""
    part = base("truncated_in_pixel_data_half")
    element = locate(part, pixel_tag())
    return Payload(files=(cut(part, element.value_start + element.length // 2),))


@case(net=CANNOT_UNDERSTAND, enhance="refused")
def truncated_last_byte() -> Payload:
    """The last byte of Pixel Data missing."""
    part = base("truncated_last_byte")
    return Payload(files=(cut(part, len(part.data) - 1),))


@case(net=CANNOT_UNDERSTAND, enhance="refused")
def truncated_encapsulated_fragment() -> Payload:
    """JPEG 2000 file cut in the middle of its only fragment."""
    part = encoded("truncated_encapsulated_fragment", "9.dcm").files[0]
    element = locate(part, pixel_tag())
    return Payload(files=(cut(part, element.value_start + 20000),))


@case(net=CANNOT_UNDERSTAND, enhance="refused")
def encapsulated_without_delimiter() -> Payload:
    """JPEG 2000 Pixel Data whose Sequence Delimitation Item is missing."""
    part = encoded("encapsulated_without_delimiter", "9.dcm").files[0]
    return Payload(files=(cut(part, len(part.data) - 8),))


# == B. Encodings: wrong VRs, lying lengths, structure =========================================

@case(net=OK, job="failed", enhance="refused: Rows")
def wrong_vr_rows_as_text() -> Payload:
    """Rows (US) written as LO with the text 'abc '."""
    part = base("wrong_vr_rows_as_text")
    element = locate(part, 0x00280010)
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 explicit_element(0x0028, 0x0010, "LO", b"abc ")),))


@case(net=OK, job="failed", enhance="refused: Rows")
def wrong_vr_rows_as_float() -> Payload:
    """Rows written as FD 256.5."""
    part = base("wrong_vr_rows_as_float")
    element = locate(part, 0x00280010)
    new = explicit_element(0x0028, 0x0010, "FD", struct.pack("<d", 256.5))
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 new),))


@case(net=OK, job="failed: nothing derived: source SeriesInstanceUID has VR OB",
      enhance="refused: source SeriesInstanceUID has VR OB, expected UI")
def wrong_vr_series_uid_binary() -> Payload:
    """Series Instance UID written as OB with binary bytes."""
    part = base("wrong_vr_series_uid_binary")
    element = locate(part, 0x0020000E)
    new = explicit_element(0x0020, 0x000E, "OB", bytes(range(1, 17)))
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 new),))


@case(net=(CANNOT_UNDERSTAND, "unknown VR"),
      enhance="skipped: unreadable DICOM header: NotImplementedError: Unknown Value "
              "Representation 'ZZ'")
def unknown_vr() -> Payload:
    """Station Name written with the non-existent VR 'ZZ'."""
    part = base("unknown_vr")
    element = locate(part, 0x00081010)
    new = explicit_element(0x0008, 0x1010, "ZZ", b"STATION ")
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 new),))


@case(net=(CANNOT_UNDERSTAND, "(US) has length 3"),
      enhance=("skipped: unreadable DICOM header", "even multiple"))
def odd_length_us() -> Payload:
    """Columns (US) with a 3-byte value."""
    part = base("odd_length_us")
    element = locate(part, 0x00280011)
    new = explicit_element(0x0028, 0x0011, "US", b"\x00\x01\x00")
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 new),))


@case(net=CANNOT_UNDERSTAND, enhance="skipped")
def undefined_length_text() -> Payload:
    """Station Name (SH) with undefined length 0xFFFFFFFF and no delimiter."""
    part = base("undefined_length_text")
    element = locate(part, 0x00081010)
    new = struct.pack("<HH2sH", 0x0008, 0x1010, b"UN", 0) + struct.pack("<L", 0xFFFFFFFF)
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 new + b"STATION "),))


@case(net=CANNOT_UNDERSTAND, enhance="refused")
def undefined_length_native_pixel_data() -> Payload:
    """Native (uncompressed) Pixel Data with undefined length and no items."""
    part = base("undefined_length_native_pixel_data")
    element = locate(part, pixel_tag())
    header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, 0xFFFFFFFF)
    return Payload(files=(splice(part, element.start, element.value_start, header),))


@case(net=CANNOT_UNDERSTAND, enhance="skipped")
def unterminated_sequence() -> Payload:
    """Referenced Image Sequence of undefined length with no Sequence Delimitation Item."""
    ds = mr("unterminated_sequence")
    part = part10(ds, "unterminated_sequence.dcm")
    element = locate(part, 0x00081140)
    item = ds.ReferencedImageSequence[0]
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, item)
    item_bytes = struct.pack("<HHL", 0xFFFE, 0xE000, len(body.getvalue())) + body.getvalue()
    new = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + item_bytes
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 new),))


@case(net=CANNOT_UNDERSTAND, enhance="skipped: unreadable DICOM header")
def item_longer_than_sequence() -> Payload:
    """A sequence item whose length runs past the end of its sequence and the file."""
    part = base("item_longer_than_sequence")
    element = locate(part, 0x00081140)
    at = element.value_start + 4  # the first item's length field
    return Payload(files=(splice(part, at, at + 4, struct.pack("<L", 0x7FFFFFF0)),))


@case(net=CANNOT_UNDERSTAND, enhance="skipped", watch_memory=True)
def element_claims_4gb_before_uids() -> Payload:
    """A private OB element before the UIDs claiming 0xFFFFFFF0 bytes (4 GB), 16 sent."""
    part = base("element_claims_4gb_before_uids")
    creator = explicit_element(0x0009, 0x0010, "LO", b"HOSTILE ")
    liar = explicit_element(0x0009, 0x1000, "OB", bytes(16), length=0xFFFFFFF0)
    return Payload(files=(insert_before(part, 0x00100010, creator + liar),))


@case(net=CANNOT_UNDERSTAND, enhance="refused", watch_memory=True)
def element_claims_4gb_after_uids() -> Payload:
    """The CSA private element's length rewritten to 0xFFFFFFF0 (after every UID)."""
    part = base("element_claims_4gb_after_uids")
    element = locate(part, 0x00291020)
    at = element.value_start - 4
    return Payload(files=(splice(part, at, at + 4, struct.pack("<L", 0xFFFFFFF0)),))


@case(net=CANNOT_UNDERSTAND, enhance=DERIVED, watch_memory=True)
def pixel_data_claims_4gb() -> Payload:
    """Pixel Data's length field says 0xFFFFFFF0 bytes; 128 KB follow."""
    part = base("pixel_data_claims_4gb")
    element = locate(part, pixel_tag())
    at = element.value_start - 4
    return Payload(files=(splice(part, at, at + 4, struct.pack("<L", 0xFFFFFFF0)),))


def _nested(depth: int) -> bytes:
    """``depth`` sequences nested inside each other, each of undefined length."""
    open_ = struct.pack("<HH2sHL", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return (open_ + item) * depth + close * depth


@case(net=(CANNOT_UNDERSTAND, "nested deeper than 64"), enhance="skipped")
def deeply_nested_sequences() -> Payload:
    """Referenced Image Sequence nested 5000 levels deep (80 KB)."""
    part = base("deeply_nested_sequences")
    element = locate(part, 0x00081140)
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 _nested(5000)),))


@case(net=OK, job="unrouted: no readable instance", enhance="skipped: unreadable DICOM header")
def implicit_vr_odd_length_rows() -> Payload:
    """Implicit VR: Rows (US) with a 3-byte value (no VR on the wire for the walk to check)."""
    part = part10(mr("implicit_vr_odd_length_rows"), "implicit.dcm", transfer_syntax=IMPLICIT_LE)
    rows = locate(part, 0x00280010)
    return Payload(files=(splice(part, rows.start, rows.value_start + rows.length,
                                 struct.pack("<HHL", 0x0028, 0x0010, 3) + b"\x00\x01\x00"),))


@case(net=OK, job="done", enhance=DERIVED)
def elements_out_of_order() -> Payload:
    """Series Instance UID moved to the front, before SOP Class UID."""
    part = base("elements_out_of_order")
    element = locate(part, 0x0020000E)
    moved = part.data[element.start:element.value_start + element.length]
    without = splice(part, element.start, element.value_start + element.length, b"")
    return Payload(files=(splice(without, without.dataset_offset, without.dataset_offset,
                                 moved),))


@case(net=(CANNOT_UNDERSTAND, "a File Meta (0002,xxxx) element"),
      enhance="refused: Pixel Data fragments cannot be read")
def file_meta_group_inside_dataset() -> Payload:
    """Group 0002 elements inside the dataset body (a second, lying file meta)."""
    part = base("file_meta_group_inside_dataset")
    meta = explicit_element(0x0002, 0x0010, "UI", b"1.2.840.10008.1.2.4.50\x00")
    return Payload(files=(splice(part, part.dataset_offset, part.dataset_offset, meta),))


@case(net=CANNOT_UNDERSTAND, enhance=DERIVED)
def explicit_data_sent_as_implicit() -> Payload:
    """Explicit VR bytes announced (and sent) as Implicit VR Little Endian."""
    ds = mr("explicit_data_sent_as_implicit")
    return one(ds, "explicit_data_sent_as_implicit.dcm", meta_transfer_syntax=IMPLICIT_LE)


@case(net=CANNOT_UNDERSTAND, enhance="skipped")
def little_endian_data_sent_as_big_endian() -> Payload:
    """Little-endian bytes announced (and sent) as Explicit VR Big Endian."""
    ds = mr("little_endian_data_sent_as_big_endian")
    return one(ds, "little_endian_data_sent_as_big_endian.dcm", meta_transfer_syntax=BIG_ENDIAN)


# == C. Pixel module ===========================================================================

@case(net=OK, job="failed: nothing derived: no Pixel Data",
      enhance="refused: no Pixel Data (7FE0,0010)")
def missing_pixel_data() -> Payload:
    """An MR image without Pixel Data."""
    return one(mr("missing_pixel_data", PixelData=None))


@case(net=OK, job="failed: nothing derived: Pixel Data holds 65536 bytes",
      enhance="refused: Pixel Data holds 65536 bytes")
def pixel_data_shorter() -> Payload:
    """Pixel Data half as long as Rows x Columns x BitsAllocated (consistent length field)."""
    ds = mr("pixel_data_shorter")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return one(ds)


@case(net=OK, job="failed: nothing derived: Pixel Data holds 262144 bytes",
      enhance="refused: Pixel Data holds 262144 bytes")
def pixel_data_longer() -> Payload:
    """Pixel Data twice as long as one frame, without NumberOfFrames."""
    ds = mr("pixel_data_longer")
    ds.PixelData = ds.PixelData * 2
    return one(ds)


@case(net=OK, job="done", enhance=DERIVED)
def pixel_data_one_padding_byte() -> Payload:
    """8-bit Pixel Data of odd size with its (legal) trailing padding byte."""
    ds = mr("pixel_data_one_padding_byte")
    pixels = (ds.pixel_array[:255, :255] >> 4).astype(np.uint8)
    ds.Rows = ds.Columns = 255
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = pixels.tobytes() + b"\x00"
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        delattr(ds, keyword)
    return one(ds)


@case(net=OK, job="failed: nothing derived: Rows x Columns is 65535 x 65535",
      enhance="refused: Rows x Columns is 65535 x 65535", watch_memory=True)
def rows_columns_65535() -> Payload:
    """Rows x Columns of 65535 x 65535 (8 GB at 16 bits) with one real slice of data."""
    return one(mr("rows_columns_65535", Rows=65535, Columns=65535))


@case(net=OK, job="failed: nothing derived: Pixel Data holds", enhance="refused: Pixel Data holds",
      watch_memory=True)
def rows_columns_8192_square() -> Payload:
    """8192 x 8192 (at the limit, 128 MB) with only 128 KB of Pixel Data."""
    return one(mr("rows_columns_8192_square", Rows=8192, Columns=8192))


@case(net=OK, job="failed: nothing derived: Rows x Columns is 0 x 256",
      enhance="refused: Rows x Columns is 0 x 256")
def rows_zero() -> Payload:
    """Rows = 0."""
    return one(mr("rows_zero", Rows=0))


@case(net=OK, job="failed: nothing derived: BitsStored is 20",
      enhance="refused: BitsStored is 20 with BitsAllocated 16")
def bits_stored_above_bits_allocated() -> Payload:
    """BitsStored 20 > BitsAllocated 16."""
    return one(mr("bits_stored_above_bits_allocated", BitsStored=20, HighBit=19))


@case(net=OK, job="failed: nothing derived: BitsStored is 0", enhance="refused: BitsStored is 0")
def bits_stored_zero() -> Payload:
    """BitsStored = 0."""
    return one(mr("bits_stored_zero", BitsStored=0))


@case(net=OK, job="failed: nothing derived: BitsAllocated is 12",
      enhance="refused: BitsAllocated is 12")
def bits_allocated_12() -> Payload:
    """BitsAllocated = 12 (not a multiple of 8)."""
    return one(mr("bits_allocated_12", BitsAllocated=12))


@case(net=OK, job="failed: nothing derived: BitsAllocated is 1",
      enhance="refused: BitsAllocated is 1")
def bits_allocated_1() -> Payload:
    """BitsAllocated = 1 (a bitmap) on an MR image."""
    return one(mr("bits_allocated_1", BitsAllocated=1, BitsStored=1, HighBit=0))


@case(net=OK, job="failed: nothing derived: PixelRepresentation is 2",
      enhance="refused: PixelRepresentation is 2")
def pixel_representation_2() -> Payload:
    """PixelRepresentation = 2 (only 0 and 1 exist)."""
    return one(mr("pixel_representation_2", PixelRepresentation=2))


@case(net=OK, job="failed: nothing derived: PhotometricInterpretation",
      enhance="refused: PhotometricInterpretation 'MONOCHROME2' with SamplesPerPixel 0")
def samples_per_pixel_0() -> Payload:
    """SamplesPerPixel = 0."""
    return one(mr("samples_per_pixel_0", SamplesPerPixel=0))


def _colour(name: str, photometric: str) -> Dataset:
    ds = mr(name)
    grey = (ds.pixel_array >> 4).astype(np.uint8)
    ds.PixelData = np.stack([grey, grey // 2, 255 - grey], axis=-1).tobytes()
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue", "WindowCenter",
                    "WindowWidth"):
        delattr(ds, keyword)
    return ds


@case(net=OK, job="failed: nothing derived: PhotometricInterpretation 'RGB'",
      enhance="refused: PhotometricInterpretation 'RGB' with SamplesPerPixel 3")
def rgb_to_grayscale_model() -> Payload:
    """An RGB MR image routed to a grayscale model."""
    return one(_colour("rgb_to_grayscale_model", "RGB"))


@case(net=OK, job="failed: nothing derived: PhotometricInterpretation 'YBR_FULL'",
      enhance="refused: PhotometricInterpretation 'YBR_FULL'")
def ybr_full_to_grayscale_model() -> Payload:
    """A YBR_FULL MR image routed to a grayscale model."""
    return one(_colour("ybr_full_to_grayscale_model", "YBR_FULL"))


@case(net=OK, job="failed: nothing derived: PhotometricInterpretation 'YBR_FULL_422'",
      enhance="refused: PhotometricInterpretation 'YBR_FULL_422'")
def ybr_jpeg_to_grayscale_model() -> Payload:
    """A JPEG Baseline YBR_FULL_422 colour image labelled MR."""
    ds = source(CODEC_DIR / "SC_jpeg_no_color_transform.dcm")
    name = "ybr_jpeg_to_grayscale_model"
    ds.SeriesInstanceUID, ds.SOPInstanceUID = uid(name, "1"), uid(name, "2")
    ds.Modality, ds.PhotometricInterpretation = "MR", "YBR_FULL_422"
    return one(ds, transfer_syntax=JPEG_BASELINE)


@case(net=OK, job="failed: nothing derived: PhotometricInterpretation 'PALETTE COLOR'",
      enhance="refused: PhotometricInterpretation 'PALETTE COLOR'")
def palette_color() -> Payload:
    """PALETTE COLOR with one sample per pixel."""
    return one(mr("palette_color", PhotometricInterpretation="PALETTE COLOR"))


@case(net=OK, job="failed: nothing derived: PhotometricInterpretation 'missing'",
      enhance="refused: PhotometricInterpretation 'missing'")
def photometric_missing() -> Payload:
    """No PhotometricInterpretation."""
    return one(mr("photometric_missing", PhotometricInterpretation=None))


@case(net=OK, job="failed: nothing derived: NumberOfFrames is 3",
      enhance="refused: NumberOfFrames is 3")
def multi_frame() -> Payload:
    """A classic MR object with three frames."""
    ds = mr("multi_frame", NumberOfFrames=3)
    ds.PixelData = ds.PixelData * 3
    return one(ds)


@case(net=OK, job="failed: nothing derived: NumberOfFrames", enhance="refused: NumberOfFrames")
def number_of_frames_text() -> Payload:
    """NumberOfFrames 'abc'."""
    return one(mr("number_of_frames_text", NumberOfFrames="abc"))


@case(net=OK, job="failed: nothing derived: NumberOfFrames is 2147483647",
      enhance="refused: NumberOfFrames is 2147483647", watch_memory=True)
def number_of_frames_huge() -> Payload:
    """NumberOfFrames 2147483647 with one frame of data."""
    return one(mr("number_of_frames_huge", NumberOfFrames=2147483647))


@case(net=OK, job="failed: nothing derived: NumberOfFrames is 0",
      enhance="refused: NumberOfFrames is 0")
def number_of_frames_zero() -> Payload:
    """NumberOfFrames 0."""
    return one(mr("number_of_frames_zero", NumberOfFrames=0))


# -- Enhanced (multi-frame) MR: the real Siemens XA30 object cut to a few frames ----------------

def enhanced_mr(name: str, frames: int = 6) -> Dataset:
    """The first ``frames`` frames of the real XA30 Enhanced MR in the case's own series."""
    ds = copy.deepcopy(_enhanced_template(frames))
    ds.SeriesInstanceUID = uid(name, "1")
    ds.SOPInstanceUID = uid(name, "2")
    ds.SeriesDescription = f"hostile {name}"[:64]
    return ds


@cache
def _enhanced_template(frames: int) -> Dataset:
    ds = source(next(ENHANCED_MR_DIR.glob("*.dcm")))
    ds.remove_private_tags()
    size = int(ds.Rows) * int(ds.Columns) * 2
    ds.PixelData = ds.PixelData[: frames * size]
    ds.PerFrameFunctionalGroupsSequence = Sequence(list(ds.PerFrameFunctionalGroupsSequence)
                                                   [:frames])
    ds.NumberOfFrames = frames
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


@case(net=OK, job="done (1 derived)", enhance="derived")
def enhanced_mr_control() -> Payload:
    """A good Enhanced MR of 6 frames (the control: derived in its own IOD)."""
    return one(enhanced_mr("enhanced_mr_control"), sop_class=ENHANCED_MR_STORAGE)


@case(net=OK, job="failed: nothing derived: NumberOfFrames is 9 but PerFrameFunctionalGroups",
      enhance="refused: NumberOfFrames is 9 but PerFrameFunctionalGroupsSequence has 6")
def enhanced_number_of_frames_lies() -> Payload:
    """An Enhanced MR whose NumberOfFrames says 9 for 6 frames and 6 per-frame items."""
    ds = enhanced_mr("enhanced_number_of_frames_lies")
    ds.NumberOfFrames = 9
    return one(ds, sop_class=ENHANCED_MR_STORAGE)


@case(net=OK, job="failed: nothing derived: NumberOfFrames is 2147483647",
      enhance="refused: NumberOfFrames is 2147483647", watch_memory=True)
def enhanced_number_of_frames_huge() -> Payload:
    """An Enhanced MR whose NumberOfFrames says 2147483647 (6 frames of data)."""
    ds = enhanced_mr("enhanced_number_of_frames_huge")
    ds.NumberOfFrames = 2147483647
    return one(ds, sop_class=ENHANCED_MR_STORAGE)


@case(net=OK, job=("failed: nothing derived: Pixel Data holds", "larger than the data"),
      enhance=("refused: Pixel Data holds", "NumberOfFrames is larger than the data"))
def enhanced_pixel_data_short() -> Payload:
    """An Enhanced MR with 6 frames described but Pixel Data for 3."""
    ds = enhanced_mr("enhanced_pixel_data_short")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return one(ds, sop_class=ENHANCED_MR_STORAGE)


@case(net=OK, job="failed: nothing derived: PerFrameFunctionalGroupsSequence (5200,9230) is "
      "missing", enhance="refused: PerFrameFunctionalGroupsSequence (5200,9230) is missing")
def enhanced_functional_groups_missing() -> Payload:
    """An Enhanced MR without its per-frame and shared functional groups."""
    ds = enhanced_mr("enhanced_functional_groups_missing")
    del ds.PerFrameFunctionalGroupsSequence, ds.SharedFunctionalGroupsSequence
    return one(ds, sop_class=ENHANCED_MR_STORAGE)


@case(net=OK, job="failed: nothing derived: frame 3 has no ImagePositionPatient",
      enhance="refused: frame 3 has no ImagePositionPatient")
def enhanced_plane_position_missing() -> Payload:
    """An Enhanced MR whose third frame has no Plane Position."""
    ds = enhanced_mr("enhanced_plane_position_missing")
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    return one(ds, sop_class=ENHANCED_MR_STORAGE)


@case(net=OK, job="failed: nothing derived: frames 1 and 4 have different "
      "ImageOrientationPatient", enhance="refused: frames 1 and 4 have different "
      "ImageOrientationPatient")
def enhanced_mixed_orientations() -> Payload:
    """An Enhanced MR whose frames 4-6 are axial, frames 1-3 sagittal (a 3-plane localizer)."""
    ds = enhanced_mr("enhanced_mixed_orientations")
    for item in list(ds.PerFrameFunctionalGroupsSequence)[3:]:
        item.PlaneOrientationSequence[0].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    return one(ds, sop_class=ENHANCED_MR_STORAGE)


@case(net=OK, job="failed: nothing derived: Float Pixel Data is not supported",
      enhance="refused: Float Pixel Data is not supported")
def float_pixel_data() -> Payload:
    """Float Pixel Data instead of Pixel Data."""
    ds = mr("float_pixel_data")
    ds.FloatPixelData = ds.pixel_array.astype(np.float32).tobytes()
    del ds.PixelData
    return one(ds)


@case(net=OK, job="failed: nothing derived: a Modality LUT Sequence is present",
      enhance="refused: a Modality LUT Sequence is present")
def modality_lut_sequence() -> Payload:
    """A Modality LUT Sequence (non-linear rescale)."""
    ds = mr("modality_lut_sequence")
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = np.arange(4096, dtype=np.uint16).tobytes()
    ds.ModalityLUTSequence = Sequence([item])
    return one(ds)


@case(net=OK, job="failed: nothing derived: Pixel Data fragments cannot be read",
      enhance="refused: Pixel Data fragments cannot be read")
def native_pixels_under_jpeg_syntax() -> Payload:
    """Native Pixel Data in a file (and context) claiming JPEG Baseline."""
    ds = mr("native_pixels_under_jpeg_syntax")
    return one(ds, meta_transfer_syntax=JPEG_BASELINE)


@case(net=OK, job="done", enhance=DERIVED)
def corrupt_jpeg2000() -> Payload:
    """JPEG 2000 codestream with 64 garbled bytes in the middle."""
    ds = compressed_mr("corrupt_jpeg2000", "9.dcm")
    return encoded("corrupt_jpeg2000", "9.dcm", garble(ds.PixelData, 1))


@case(net=OK, job="failed: nothing derived: Pixel Data cannot be decoded",
      enhance="refused: Pixel Data cannot be decoded")
def corrupt_jpeg_lossless() -> Payload:
    """JPEG Lossless codestream with 64 garbled bytes in the middle (decodes to noise)."""
    ds = compressed_mr("corrupt_jpeg_lossless", "5.dcm")
    return encoded("corrupt_jpeg_lossless", "5.dcm", garble(ds.PixelData, 2))


@case(net=OK, job="done", enhance=DERIVED)
def corrupt_jpeg_ls() -> Payload:
    """JPEG-LS codestream with 64 garbled bytes in the middle."""
    ds = compressed_mr("corrupt_jpeg_ls", "7.dcm")
    return encoded("corrupt_jpeg_ls", "7.dcm", garble(ds.PixelData, 3))


@case(net=OK, job="failed: nothing derived: Pixel Data cannot be decoded",
      enhance="refused: Pixel Data cannot be decoded")
def corrupt_rle_header() -> Payload:
    """RLE Lossless with a header claiming 15 segments at offsets past the end."""
    ds = compressed_mr("corrupt_rle_header", "4.dcm")
    pixels = bytearray(ds.PixelData)
    at = pixels.find(b"\xfe\xff\x00\xe0", 8) + 8  # the first fragment, after the empty BOT
    struct.pack_into("<16L", pixels, at, 15, *([0x7FFFFFF0] * 15))
    return encoded("corrupt_rle_header", "4.dcm", bytes(pixels))


@case(net=OK, job="failed: nothing derived: Pixel Data cannot be decoded",
      enhance="refused: Pixel Data cannot be decoded")
def rle_rows_fewer_than_encoded() -> Payload:
    """RLE Lossless whose Rows (200) is less than the encoded frame's 384 (the Rust decoder
    panics, and a pyo3 panic is a BaseException, not an Exception)."""
    ds = compressed_mr("rle_rows_fewer_than_encoded", "4.dcm", Rows=200)
    return one(ds, f"{ds.SOPInstanceUID}.dcm", transfer_syntax=str(ds.file_meta.TransferSyntaxUID))


@case(net=OK, job="failed: nothing derived: JPEG 2000 codestream is 50000 x 50000",
      enhance="refused: JPEG 2000 codestream is 50000 x 50000", watch_memory=True)
def jpeg2000_codestream_bomb() -> Payload:
    """J2K header says 384 x 384; its SIZ marker says 50000 x 50000."""
    return patched_codestream("jpeg2000_codestream_bomb", "9.dcm", b"\xff\x51", 6, ">IIIIII",
                              (50000, 50000, 0, 0, 50000, 50000))


@case(net=OK, job="failed: nothing derived: JPEG codestream is 65535 x 65535",
      enhance="refused: JPEG codestream is 65535 x 65535", watch_memory=True)
def jpeg_lossless_codestream_bomb() -> Payload:
    """JPEG Lossless header says 384 x 384; its SOF3 marker says 65535 x 65535."""
    return patched_codestream("jpeg_lossless_codestream_bomb", "6.dcm", b"\xff\xc3", 5, ">HH",
                              (65535, 65535))


@case(net=OK, job="failed: nothing derived: JPEG-LS codestream is 65535 x 65535",
      enhance="refused: JPEG-LS codestream is 65535 x 65535", watch_memory=True)
def jpeg_ls_codestream_bomb() -> Payload:
    """JPEG-LS header says 384 x 384; its SOF55 marker says 65535 x 65535."""
    return patched_codestream("jpeg_ls_codestream_bomb", "7.dcm", b"\xff\xf7", 5, ">HH",
                              (65535, 65535))


# == D. Transfer syntax and file meta ==========================================================

@case(net="context rejected", enhance="refused: Transfer Syntax UID '1.2.3.4.5.6'")
def unknown_transfer_syntax() -> Payload:
    """File meta Transfer Syntax UID '1.2.3.4.5.6' (proposed as such on the network)."""
    ds = mr("unknown_transfer_syntax")
    return one(ds, meta_transfer_syntax="1.2.3.4.5.6")


@case(net="context rejected", enhance="refused: Transfer Syntax UID")
def sop_class_as_transfer_syntax() -> Payload:
    """File meta Transfer Syntax UID is a SOP Class UID (MR Image Storage)."""
    ds = mr("sop_class_as_transfer_syntax")
    return one(ds, meta_transfer_syntax=MR_STORAGE)


@case(net=OK, job="done",
      enhance="refused: the file meta has no Transfer Syntax UID (0002,0010)")
def transfer_syntax_missing_in_meta() -> Payload:
    """File meta without Transfer Syntax UID (sent as Explicit VR Little Endian)."""
    ds = mr("transfer_syntax_missing_in_meta")
    return one(ds, meta_transfer_syntax="", send_as=EXPLICIT_LE)


@case(net=CANNOT_UNDERSTAND, enhance="skipped: unreadable DICOM header")
def deflate_announced_plain_data() -> Payload:
    """Deflated Explicit VR Little Endian announced; the data is not deflated."""
    ds = mr("deflate_announced_plain_data")
    return one(ds, meta_transfer_syntax=DEFLATED)


@case(net=OK, job="done", enhance=DERIVED)
def deflated_valid() -> Payload:
    """A valid Deflated Explicit VR Little Endian instance (must work)."""
    ds = mr("deflated_valid")
    return one(ds, transfer_syntax=DEFLATED)


@case(net="context rejected",
      enhance="refused: transfer syntax JPEG Extended (Process 3 and 5) cannot be decoded")
def retired_jpeg_syntax() -> Payload:
    """Retired JPEG Extended (Process 3 & 5) syntax with native pixel data."""
    ds = mr("retired_jpeg_syntax")
    return one(ds, meta_transfer_syntax="1.2.840.10008.1.2.4.52",
               send_as="1.2.840.10008.1.2.4.52")


# == E. Series-level hostility =================================================================

@case(net=OK, job="failed: nothing derived: no Pixel Data", enhance="refused: no Pixel Data")
def zero_slice_series() -> Payload:
    """A series whose only instance is Raw Data (Modality MR, no image at all)."""
    ds = mr("zero_slice_series", PixelData=None, SOPClassUID=RAW_DATA_STORAGE)
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(ds, keyword)
    return one(ds)


@case(net=OK, job="done", enhance=DERIVED)
def mixed_sizes_in_one_series() -> Payload:
    """Two 256 x 256 slices and one 128 x 128 slice under one Series Instance UID."""
    name = "mixed_sizes_in_one_series"
    files = [part10(mr(name, i, slice_number=14 + i), f"{name}-{i}.dcm") for i in range(2)]
    small = mr(name, 2, slice_number=16)
    small.PixelData = small.pixel_array[::2, ::2].copy().tobytes()
    small.Rows = small.Columns = 128
    files.append(part10(small, f"{name}-2.dcm"))
    return Payload(files=tuple(files))


@case(net=OK, job="done", enhance=DERIVED)
def mixed_orientations_in_one_series() -> Payload:
    """Two slices of one series with different orientations (sagittal and axial)."""
    name = "mixed_orientations_in_one_series"
    first = mr(name, 0)
    second = mr(name, 1, slice_number=16, ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    return Payload(files=(part10(first, f"{name}-0.dcm"), part10(second, f"{name}-1.dcm")))


@case(net=OK, job="done",
      enhance=("refused: another file with SOPInstanceUID", "duplicate refused", DERIVED))
def duplicate_sop_uid_different_content() -> Payload:
    """Two files with one SOP Instance UID and different pixels (the second replaces)."""
    name = "duplicate_sop_uid_different_content"
    first, second = mr(name, 0), mr(name, 0, slice_number=20)
    return Payload(files=(part10(first, f"{name}-a.dcm"), part10(second, f"{name}-b.dcm")))


@case(net=OK, job="done",
      enhance=("refused: another file with SOPInstanceUID", "duplicate refused", DERIVED))
def duplicate_sop_uid_across_series() -> Payload:
    """One SOP Instance UID sent in two different series."""
    name = "duplicate_sop_uid_across_series"
    first = mr(name, 0)
    second = mr(name, 0, slice_number=20)
    second.SeriesInstanceUID = uid(name, "3")
    return Payload(files=(part10(first, f"{name}-a.dcm"), part10(second, f"{name}-b.dcm")))


@case(net=OK, job="done", enhance=DERIVED)
def same_position_twice() -> Payload:
    """Two slices of one series at the same Image Position (Patient)."""
    name = "same_position_twice"
    first = mr(name, 0)
    second = mr(name, 1, slice_number=16, ImagePositionPatient=first.ImagePositionPatient)
    return Payload(files=(part10(first, f"{name}-0.dcm"), part10(second, f"{name}-1.dcm")))


@case(net=OK, job="unrouted: no rule matches", enhance=DERIVED)
def modality_not_routed() -> Payload:
    """An image with Modality 'OT' (no rule of the node matches it)."""
    return one(mr("modality_not_routed", Modality="OT"))


@case(net=OK, job="unrouted: produced by dicomnode",
      enhance="series skipped: series was produced by dicomnode")
def produced_by_dicomnode() -> Payload:
    """An instance carrying this node's Contributing Equipment item (a PACS echoing back)."""
    ds = mr("produced_by_dicomnode")
    item = Dataset()
    item.Manufacturer = "dicomnode"
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator = "109102", "DCM"
    purpose.CodeMeaning = "Processing Equipment"
    item.PurposeOfReferenceCodeSequence = Sequence([purpose])
    ds.ContributingEquipmentSequence = Sequence([item])
    return one(ds)


# == F. UIDs and text ==========================================================================

@case(net=OK, job="failed: nothing derived: source SOPInstanceUID",
      enhance=("refused: source SOPInstanceUID", "is not a UID"))
def path_traversal_sop_uid() -> Payload:
    """SOP Instance UID '../../../../tmp/hostile-x'."""
    return one(mr("path_traversal_sop_uid", SOPInstanceUID="../../../../tmp/hostile-x"))


@case(net=OK, job="failed: nothing derived: source SeriesInstanceUID",
      enhance=("refused: source SeriesInstanceUID", "is not a UID"))
def path_traversal_series_uid() -> Payload:
    """Series Instance UID '../../escape'."""
    return one(mr("path_traversal_series_uid", SeriesInstanceUID="../../escape"))


@case(net=OK, job="failed: nothing derived: source SOPInstanceUID",
      enhance=("refused: source SOPInstanceUID", "is not a UID"))
def absolute_path_uid() -> Payload:
    """SOP Instance UID '/etc/passwd'."""
    return one(mr("absolute_path_uid", SOPInstanceUID="/etc/passwd"))


@case(net=OK, job="failed: nothing derived: source SOPInstanceUID",
      enhance=("refused: source SOPInstanceUID", "is not a UID"))
def backslash_path_uid() -> Payload:
    """SOP Instance UID '..\\\\..\\\\windows\\\\x' (a Windows path)."""
    return one(mr("backslash_path_uid", SOPInstanceUID="..\\..\\windows\\x"))


@case(net=OK, job="failed: nothing derived: source SOPInstanceUID",
      enhance=("refused: source SOPInstanceUID", "is not a UID"))
def uid_with_nul_inside() -> Payload:
    """SOP Instance UID with a NUL byte inside ('1.2.3\\x004.5')."""
    return one(mr("uid_with_nul_inside", SOPInstanceUID=uid("uid_with_nul_inside", "2") + "\x001"))


@case(net=(CANNOT_UNDERSTAND, "SOPInstanceUID is 65 characters long"),
      enhance="refused: source SOPInstanceUID")
def uid_65_characters() -> Payload:
    """Dataset SOP Instance UID of 65 characters (the limit is 64); the request's is 64."""
    long_uid = uid("uid_65_characters", "2") + ".1" * 40
    long_uid = long_uid[:64].rstrip(".") + "1" * (65 - len(long_uid[:64].rstrip(".")))
    assert len(long_uid) == 65
    return one(mr("uid_65_characters", SOPInstanceUID=long_uid), sop_uid=long_uid[:64])


@case(net=(CANNOT_UNDERSTAND, "SeriesInstanceUID is 1000 characters long"),
      enhance="refused: source SeriesInstanceUID")
def uid_1000_characters() -> Payload:
    """Series Instance UID of 1000 characters."""
    return one(mr("uid_1000_characters", SeriesInstanceUID="1." + "2" * 998))


@case(net=CANNOT_UNDERSTAND, enhance="skipped: SOPInstanceUID is missing")
def sop_uid_empty() -> Payload:
    """SOP Instance UID present but empty (request says some UID)."""
    ds = mr("sop_uid_empty", SOPInstanceUID="")
    return one(ds, sop_uid=uid("sop_uid_empty", "2", 9))


@case(net=OK, job="done", enhance=DERIVED)
def non_ascii_without_character_set() -> Payload:
    """UTF-8 Patient Name bytes with no Specific Character Set (default repertoire)."""
    part = base("non_ascii_without_character_set", SpecificCharacterSet=None)
    element = locate(part, 0x00100010)
    name = "Müller^Jürgen Ωμέγα".encode()
    new = explicit_element(0x0010, 0x0010, "PN", name + b" " * (len(name) % 2))
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 new),))


@case(net=OK, job="done", enhance=DERIVED)
def unknown_character_set() -> Payload:
    """Specific Character Set 'ISO_IR 999'."""
    return one(mr("unknown_character_set", SpecificCharacterSet="ISO_IR 999"))


@case(net=OK, job="done", enhance=DERIVED)
def invalid_utf8_under_iso_ir_192() -> Payload:
    """Patient Name bytes that are not UTF-8 under 'ISO_IR 192'."""
    part = base("invalid_utf8_under_iso_ir_192", SpecificCharacterSet="ISO_IR 192")
    element = locate(part, 0x00100010)
    new = explicit_element(0x0010, 0x0010, "PN", b"\xff\xfe\xc3\x28^\xa0\xa1")
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 new),))


@case(net=OK, job="done", enhance=DERIVED)
def iso2022_garbage_escapes() -> Payload:
    """'ISO 2022 IR 6\\\\ISO 2022 IR 87' with broken escape sequences in the name."""
    part = base("iso2022_garbage_escapes",
                SpecificCharacterSet=["ISO 2022 IR 6", "ISO 2022 IR 87"])
    element = locate(part, 0x00100010)
    new = explicit_element(0x0010, 0x0010, "PN", b"\x1b$B\x1b(Z\x1b$)\xff\xfe")
    return Payload(files=(splice(part, element.start, element.value_start + element.length,
                                 new),))


@case(net=OK, job="done", enhance=DERIVED)
def overlong_patient_name() -> Payload:
    """Patient Name of 10 000 characters (PN allows 64 per component group)."""
    return one(mr("overlong_patient_name", PatientName="A" * 10000))


@case(net=OK, job="done", enhance=DERIVED, watch_memory=True)
def huge_private_element() -> Payload:
    """A 50 MB private OB element, before the UIDs."""
    part = base("huge_private_element")
    creator = explicit_element(0x0009, 0x0010, "LO", b"HOSTILE ")
    blob = explicit_element(0x0009, 0x1000, "OB", bytes(50 * 2**20))
    return Payload(files=(insert_before(part, 0x00100010, creator + blob),))


# == G. Geometry and numbers ===================================================================

@case(net=OK, job="failed: nothing derived: PixelSpacing", enhance="refused: PixelSpacing")
def pixel_spacing_zero() -> Payload:
    """Pixel Spacing '0\\\\0'."""
    return one(mr("pixel_spacing_zero", PixelSpacing=["0", "0"]))


@case(net=OK, job="failed: nothing derived: PixelSpacing", enhance="refused: PixelSpacing")
def pixel_spacing_negative() -> Payload:
    """Pixel Spacing '-1\\\\-1'."""
    return one(mr("pixel_spacing_negative", PixelSpacing=["-1", "-1"]))


@case(net=OK, job="failed: nothing derived: PixelSpacing", enhance="refused: PixelSpacing")
def pixel_spacing_nan() -> Payload:
    """Pixel Spacing 'nan\\\\nan'."""
    return one(mr("pixel_spacing_nan", PixelSpacing=["nan", "nan"]))


@case(net=OK, job="failed: nothing derived: PixelSpacing", enhance="refused: PixelSpacing")
def pixel_spacing_one_value() -> Payload:
    """Pixel Spacing with one value ('0.5')."""
    return one(mr("pixel_spacing_one_value", PixelSpacing="0.5"))


@case(net=OK, job="failed: nothing derived: PixelSpacing", enhance="refused: PixelSpacing")
def pixel_spacing_text() -> Payload:
    """Pixel Spacing 'abc\\\\def'."""
    return one(mr("pixel_spacing_text", PixelSpacing=["abc", "def"]))


@case(net=OK, job="done", enhance=DERIVED)
def orientation_degenerate() -> Payload:
    """Image Orientation (Patient) all zeros."""
    return one(mr("orientation_degenerate", ImageOrientationPatient=[0, 0, 0, 0, 0, 0]))


@case(net=OK, job=("failed: nothing derived: ImageOrientationPatient", "expected 6 finite numbers"),
      enhance=("refused: ImageOrientationPatient", "expected 6 finite numbers"))
def orientation_nan() -> Payload:
    """Image Orientation (Patient) 'nan' x 6."""
    return one(mr("orientation_nan", ImageOrientationPatient=["nan"] * 6))


@case(net=OK, job=("failed: nothing derived: ImagePositionPatient", "expected 3 finite numbers"),
      enhance=("refused: ImagePositionPatient", "expected 3 finite numbers"))
def position_infinite() -> Payload:
    """Image Position (Patient) 'inf\\\\-inf\\\\1e400'."""
    return one(mr("position_infinite", ImagePositionPatient=["inf", "-inf", "1e400"]))


@case(net=OK, job=("failed: nothing derived: ImagePositionPatient", "expected 3 finite numbers"),
      enhance=("refused: ImagePositionPatient", "expected 3 finite numbers"))
def position_two_values() -> Payload:
    """Image Position (Patient) with two values."""
    return one(mr("position_two_values", ImagePositionPatient=["1", "2"]))


@case(net=OK, job="failed: nothing derived: RescaleSlope is 0",
      enhance="refused: RescaleSlope is 0")
def rescale_slope_zero() -> Payload:
    """Rescale Slope '0' (every pixel maps to the intercept)."""
    return one(mr("rescale_slope_zero", RescaleSlope="0", RescaleIntercept="0"))


@case(net=OK, job="failed: nothing derived: RescaleSlope is nan",
      enhance="refused: RescaleSlope is nan")
def rescale_slope_nan() -> Payload:
    """Rescale Slope 'nan'."""
    return one(mr("rescale_slope_nan", RescaleSlope="nan", RescaleIntercept="0"))


@case(net=OK, job="failed: nothing derived: RescaleSlope", enhance="refused: RescaleSlope")
def rescale_slope_text() -> Payload:
    """Rescale Slope 'abc'."""
    return one(mr("rescale_slope_text", RescaleSlope="abc", RescaleIntercept="0"))


@case(net=OK, job=("failed", "RescaleIntercept 1e+300", "beyond what float32 holds"),
      enhance=("refused", "RescaleIntercept 1e+300"))
def rescale_intercept_huge() -> Payload:
    """Rescale Intercept '1e300' (modality values overflow float32)."""
    return one(mr("rescale_intercept_huge", RescaleSlope="1", RescaleIntercept="1e300"))


@case(net=OK, job="done", enhance=DERIVED)
def instance_number_text() -> Payload:
    """Instance Number 'abc'."""
    return one(mr("instance_number_text", InstanceNumber="abc"))


@case(net=OK, job="done", enhance=DERIVED)
def series_number_out_of_range() -> Payload:
    """Series Number 99999999999 (beyond IS range)."""
    return one(mr("series_number_out_of_range", SeriesNumber="99999999999"))


@case(net=OK, job="done", enhance=DERIVED)
def window_values_text() -> Payload:
    """Window Center/Width 'abc'/'-5'."""
    return one(mr("window_values_text", WindowCenter="abc", WindowWidth="-5"))


# == H. SOP identity and the C-STORE request ===================================================

@case(net=CANNOT_UNDERSTAND, enhance="skipped: SOPClassUID is missing")
def missing_sop_class_uid() -> Payload:
    """A dataset without SOP Class UID (the request says MR Image Storage)."""
    return one(mr("missing_sop_class_uid", SOPClassUID=None), sop_class=MR_STORAGE)


@case(net=MISMATCH, job=None, enhance=DERIVED)
def sop_uid_differs_from_request() -> Payload:
    """The dataset's SOP Instance UID differs from the request's Affected SOP Instance UID."""
    ds = mr("sop_uid_differs_from_request")
    return one(ds, sop_uid=uid("sop_uid_differs_from_request", "2", 7))


@case(net=MISMATCH, job=None, enhance=DERIVED)
def sop_class_differs_from_request() -> Payload:
    """The dataset says CT Image Storage; the request and context say MR Image Storage."""
    ds = mr("sop_class_differs_from_request", SOPClassUID=CT_STORAGE)
    return one(ds, sop_class=MR_STORAGE)


@case(net="context rejected", enhance="skipped")
def non_storage_sop_class() -> Payload:
    """A Modality Worklist query dataset sent for storage (non-storage SOP Class)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = WORKLIST_FIND, uid("non_storage_sop_class", "2")
    ds.PatientName = "*"
    return one(ds, sop_class=WORKLIST_FIND)


@case(net="context rejected", enhance="skipped: DICOMDIR")
def dicomdir_sent_for_storage() -> Payload:
    """A DICOMDIR (Media Storage Directory) file."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MEDIA_DIRECTORY, uid("dicomdir_sent_for_storage", "2")
    ds.SeriesInstanceUID = uid("dicomdir_sent_for_storage", "1")
    ds.DirectoryRecordSequence = Sequence([])
    return one(ds, "DICOMDIR")


@case(net=CANNOT_UNDERSTAND)
def empty_dataset() -> Payload:
    """A C-STORE whose dataset is zero bytes long."""
    part = base("empty_dataset")
    return Payload(files=(cut(part, part.dataset_offset),), enhance=False)


@case(net=CANNOT_UNDERSTAND, enhance="skipped")
def random_bytes_dataset() -> Payload:
    """4 KB of random bytes as the dataset."""
    part = base("random_bytes_dataset")
    noise = random.Random(6).randbytes(4096)
    return Payload(files=(replace(part, data=part.data[:part.dataset_offset] + noise),))


@case(enhance="skipped: not a DICOM Part 10 file")
def text_file() -> Payload:
    """A text file among the DICOM files."""
    return Payload(files=(Part10("notes.txt", b"not DICOM\n" * 10, MR_STORAGE, None, None),),
                   network=False)


# == R. Raw network scenarios (byte by byte) ===================================================

def _associate(port: int, **kwargs: object) -> dul.Association:
    assoc = dul.Association(port, contexts=((MR_STORAGE, (EXPLICIT_LE,)),),
                            **kwargs)  # type: ignore[arg-type]
    outcome = assoc.open()
    assert outcome == "accepted", outcome
    return assoc


def _good_dataset(name: str) -> bytes:
    return part10(small_mr(name)).dataset


def _half_store(assoc: dul.Association, name: str) -> None:
    """C-STORE command and the first half of the dataset, not flagged last."""
    ds = small_mr(name)
    data = part10(ds).dataset
    assoc.send(dul.pdu(dul.P_DATA_TF, dul.pdv(1, dul.store_command(MR_STORAGE,
                                                                     ds.SOPInstanceUID),
                                               command=True, last=True)))
    assoc.send(dul.pdu(dul.P_DATA_TF, dul.pdv(1, data[: len(data) // 2], command=False,
                                               last=False)))


@case(net="closed")
def connect_and_close() -> Payload:
    """TCP connect and close without sending a PDU."""
    def scenario(port: int) -> str:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
        return "closed"
    return Payload(raw=scenario)


@case(net="closed|A-ABORT")
def http_request_to_dicom_port() -> Payload:
    """An HTTP GET sent to the DICOM port."""
    def scenario(port: int) -> str:
        assoc = dul.Association(port, timeout=10)
        assoc.connect()
        assoc.send(b"GET / HTTP/1.1\r\nHost: node\r\n\r\n")
        return assoc.wait_closed()
    return Payload(raw=scenario)


@case(net="closed")
def associate_rq_truncated() -> Payload:
    """A-ASSOCIATE-RQ whose PDU is cut after 40 of its bytes, then the socket closes."""
    def scenario(port: int) -> str:
        assoc = dul.Association(port, timeout=10)
        assoc.connect()
        assoc.send(dul.associate_rq("DICOMNODE", "HOSTILE", ((MR_STORAGE, (EXPLICIT_LE,)),))[:40])
        assoc.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        return assoc.wait_closed()
    return Payload(raw=scenario)


@case(net="closed", watch_memory=True)
def associate_rq_claims_4gb() -> Payload:
    """A-ASSOCIATE-RQ header claiming a 0xFFFFFFFF-byte PDU; 1 KB follows, then close."""
    def scenario(port: int) -> str:
        assoc = dul.Association(port, timeout=10)
        assoc.connect()
        assoc.send(struct.pack(">BBL", 1, 0, 0xFFFFFFFF) + bytes(1024))
        assoc.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        return assoc.wait_closed()
    return Payload(raw=scenario)


@case(net="association rejected")
def wrong_called_ae_title() -> Payload:
    """An association to called AE title 'NOTTHENODE'."""
    def scenario(port: int) -> str:
        assoc = dul.Association(port, called="NOTTHENODE", timeout=10)
        outcome = assoc.open()
        assoc.close()
        return outcome
    return Payload(raw=scenario)


@case(net="closed")
def closed_mid_dataset() -> Payload:
    """TCP connection closed half way through a dataset."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        _half_store(assoc, "closed_mid_dataset")
        assoc.close()
        return "closed"
    return Payload(raw=scenario)


@case(net="closed")
def aborted_mid_dataset() -> Payload:
    """A-ABORT sent half way through a dataset."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        _half_store(assoc, "aborted_mid_dataset")
        assoc.abort()
        return "closed"
    return Payload(raw=scenario)


@case(net=("stalled", "others served: 0x0000"))
def stalled_mid_dataset() -> Payload:
    """Half a dataset, then silence while another association stores; then close."""
    def scenario(port: int) -> str:
        stalled = _associate(port)
        _half_store(stalled, "stalled_mid_dataset")
        other = _associate(port)
        ds = small_mr("stalled_mid_dataset", 1)
        response = other.store(1, part10(ds).dataset, MR_STORAGE, ds.SOPInstanceUID)
        other.release()
        stalled.close()
        return f"stalled; others served: {response}"
    return Payload(raw=scenario)


@case(net="A-RELEASE-RP|closed")
def release_mid_dataset() -> Payload:
    """A-RELEASE-RQ half way through a dataset."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        _half_store(assoc, "release_mid_dataset")
        assoc.send(dul.pdu(dul.A_RELEASE_RQ, bytes(4)))
        outcome = assoc.wait_closed()
        assoc.close()
        return "closed" if outcome in ("closed", "A-ABORT") else outcome
    return Payload(raw=scenario)


@case(net="closed")
def pdata_header_truncated() -> Payload:
    """Three bytes of a P-DATA-TF header, then close."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        assoc.send(b"\x04\x00\x00")
        assoc.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        return assoc.wait_closed()
    return Payload(raw=scenario)


@case(net="closed", watch_memory=True)
def pdata_claims_4gb() -> Payload:
    """A P-DATA-TF header claiming 0xFFFFFFF0 bytes; 64 KB follow, then close."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        assoc.send(struct.pack(">BBL", 4, 0, 0xFFFFFFF0) + bytes(1 << 16))
        assoc.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        return assoc.wait_closed()
    return Payload(raw=scenario)


@case(net="A-ABORT|closed")
def pdv_for_unknown_context() -> Payload:
    """A C-STORE on presentation context 99, which was never negotiated."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        ds = small_mr("pdv_for_unknown_context")
        try:
            response = assoc.store(99, part10(ds).dataset, MR_STORAGE, ds.SOPInstanceUID)
        except (dul.PeerClosed, OSError) as exc:
            return f"closed ({exc})"
        assoc.release()
        return f"answered {response}"
    return Payload(raw=scenario)


@case(net="A-ABORT|closed")
def dataset_before_command() -> Payload:
    """A dataset PDV before any command."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        data = _good_dataset("dataset_before_command")
        assoc.send(dul.pdu(dul.P_DATA_TF, dul.pdv(1, data, command=False, last=True)))
        outcome = assoc.wait_closed()
        assoc.close()
        return outcome
    return Payload(raw=scenario)


@case(net="A-ABORT|closed")
def unknown_pdu_type() -> Payload:
    """PDU type 0x99 inside an established association."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        assoc.send(struct.pack(">BBL", 0x99, 0, 4) + bytes(4))
        outcome = assoc.wait_closed()
        assoc.close()
        return outcome
    return Payload(raw=scenario)


@case(net="A-ABORT|closed")
def second_associate_rq() -> Payload:
    """A second A-ASSOCIATE-RQ inside an established association."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        assoc.send(dul.associate_rq("DICOMNODE", "HOSTILE", ((MR_STORAGE, (EXPLICIT_LE,)),)))
        outcome = assoc.wait_closed()
        assoc.close()
        return outcome
    return Payload(raw=scenario)


@case(net="A-ABORT|closed")
def pdata_before_association() -> Payload:
    """A P-DATA-TF as the very first PDU."""
    def scenario(port: int) -> str:
        assoc = dul.Association(port, timeout=10)
        assoc.connect()
        assoc.send(dul.pdu(dul.P_DATA_TF, dul.pdv(1, dul.echo_command(), True, True)))
        return assoc.wait_closed()
    return Payload(raw=scenario)


@case(net="context rejected")
def unknown_transfer_syntax_proposed() -> Payload:
    """MR Image Storage proposed only with transfer syntax '1.2.3.4.5.6'."""
    def scenario(port: int) -> str:
        assoc = dul.Association(port, contexts=((MR_STORAGE, ("1.2.3.4.5.6",)),), timeout=10)
        outcome = assoc.open()
        assoc.release()
        return f"context rejected (result {assoc.rejected.get(1)})" if outcome == "accepted" \
            and not assoc.accepted else outcome
    return Payload(raw=scenario)


@case(net="no answer")
def store_command_without_instance_uid() -> Payload:
    """A C-STORE-RQ without Affected SOP Instance UID."""
    def scenario(port: int) -> str:
        assoc = _associate(port, timeout=5.0)
        try:
            response = assoc.store(1, _good_dataset("store_command_without_instance_uid"),
                                   MR_STORAGE, None)
        except TimeoutError:
            assoc.abort()
            return "no answer within 5 s (pynetdicom ignores the request)"
        except (dul.PeerClosed, OSError) as exc:
            return f"closed ({exc})"
        assoc.release()
        return f"answered {response}"
    return Payload(raw=scenario)


@case(net="A-ABORT|closed")
def request_uid_65_characters() -> Payload:
    """A C-STORE-RQ whose Affected SOP Instance UID has 65 characters."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        name = "request_uid_65_characters"
        ds = small_mr(name)
        long_uid = (str(ds.SOPInstanceUID) + ".1" * 40)[:65]
        try:
            response = assoc.store(1, part10(ds).dataset, MR_STORAGE, long_uid)
        except (dul.PeerClosed, OSError) as exc:
            return f"closed ({exc})"
        assoc.release()
        return f"answered {response}"
    return Payload(raw=scenario)


@case(net="answered 0x0000")
def command_group_length_lies() -> Payload:
    """A C-STORE-RQ whose command group length says 0xFFFFFFFF."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        name = "command_group_length_lies"
        ds = small_mr(name)
        command = bytearray(dul.store_command(MR_STORAGE, ds.SOPInstanceUID))
        struct.pack_into("<L", command, 8, 0xFFFFFFFF)
        try:
            assoc.send_dataset(1, bytes(command), part10(ds).dataset)
            response = assoc.read_response()
        except (dul.PeerClosed, OSError) as exc:
            return f"closed ({exc})"
        assoc.release()
        return f"answered {response}"
    return Payload(raw=scenario)


@case(net=OK)
def one_byte_fragments() -> Payload:
    """A valid 32 x 32 instance sent as one-byte PDVs (thousands of PDUs)."""
    def scenario(port: int) -> str:
        assoc = _associate(port)
        ds = small_mr("one_byte_fragments")
        response = assoc.store(1, part10(ds).dataset, MR_STORAGE, ds.SOPInstanceUID,
                               fragment=1)
        assoc.release()
        return str(response)
    return Payload(raw=scenario)


@case(net=("0x0000", "released"))
def tiny_maximum_pdu_length() -> Payload:
    """Maximum PDU length 8 proposed: the node must split its answer into tiny PDVs."""
    def scenario(port: int) -> str:
        assoc = _associate(port, max_pdu=8)
        ds = small_mr("tiny_maximum_pdu_length")
        try:
            response = assoc.store(1, part10(ds).dataset, MR_STORAGE, ds.SOPInstanceUID)
        except (dul.PeerClosed, OSError) as exc:
            return f"closed ({exc})"
        released = assoc.release()
        return f"{response}; {'released' if released else 'not released'}"
    return Payload(raw=scenario)


@case(net=("rejected", "accepted"))
def more_associations_than_allowed() -> Payload:
    """20 associations held open at once (max_associations is 16): extras rejected."""
    def scenario(port: int) -> str:
        held: list[dul.Association] = []
        outcomes: list[str] = []
        lock = threading.Lock()

        def open_one() -> None:
            assoc = dul.Association(port, timeout=10)
            try:
                outcome = assoc.open()
            except (dul.PeerClosed, OSError) as exc:
                outcome = f"closed ({type(exc).__name__})"
            with lock:
                outcomes.append(outcome.split(" (")[0])
                held.append(assoc)

        threads = [threading.Thread(target=open_one) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for assoc in held:
            assoc.close()
        counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
        return ", ".join(f"{n} {o}" for o, n in counts.items())
    return Payload(raw=scenario)


def all_cases() -> list[Case]:
    return list(CASES.values())


def network_cases() -> list[Case]:
    return [c for c in CASES.values() if c.payload.raw is not None or c.payload.network]


def enhance_cases() -> list[Case]:
    return [c for c in CASES.values() if c.payload.files and c.payload.enhance]


def companion(group: int, first: int, slices: int = 2) -> list[Part10]:
    """Good 64 x 64 MR slices of companion series ``group``, sent alongside the cases.

    Cases share a few companion series (slices ``first``, ``first + 1``, ...) so that each
    series keeps receiving while its cases run and is processed once, at the end.
    """
    name = f"companion-{group}"
    result = []
    for k in range(first, first + slices):
        ds = small_mr(name, k, size=64)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0, 0, float(k)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SeriesDescription = f"companion {group}"
        result.append(part10(ds, f"{name}-{k}.dcm"))
    return result
