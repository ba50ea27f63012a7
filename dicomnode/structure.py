"""The C-STORE path's one place for Part 10 bytes: the file meta written in front of a
received dataset, the structure walk that checks it, and the header the index needs.

The receiver parses only the few UIDs the index needs; the walk over element headers is what
tells it, for the cost of a few hundred ``struct`` reads, that every byte the dataset announces
actually arrived: a file cut in its pixels, a private element claiming 4 GB, a sequence that
never ends or an unknown VR are refused at the door (0xC210) instead of answered Success and
found broken later. Values are skipped, never read, so the cost does not grow with pixels.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import pydicom.filereader
from pydicom.tag import BaseTag

from dicomnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomnode.errors import InputRejected

# PS3.5 6.2: every VR; those with a 4-byte length field in explicit VR.
_VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST",
    b"SV", b"TM", b"UC", b"UI", b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
})
_LONG = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                   b"UR", b"UT", b"UV"})
_FIXED_SIZE = {b"AT": 4, b"FD": 8, b"FL": 4, b"SL": 4, b"SS": 2, b"SV": 8, b"UL": 4,
               b"US": 2, b"UV": 8}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
MAX_DEPTH = 64  # sequences nested deeper than this are refused (pydicom recurses per level)

_IMPLICIT_LE = "1.2.840.10008.1.2"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")


def check_part10(data: bytes, transfer_syntax: str) -> None:
    """Walk the file meta and the dataset of a Part 10 byte string; raise InputRejected naming
    the first element whose header or length does not fit the bytes that are there.

    Deflated datasets are not walked (their structure is only visible once inflated).
    """
    walk_part10(data, frozenset(), transfer_syntax)


TRANSFER_SYNTAX_TAG = 0x00020010


def walk_part10(data: bytes, wanted: frozenset[int],
                transfer_syntax: str | None = None) -> dict[int, bytes] | None:
    """Check a Part 10 byte string like :func:`check_part10` and return the raw values of the
    top-level elements in ``wanted`` (and the Transfer Syntax UID), as the walk passes them.

    The dataset is read in ``transfer_syntax``, or in the one its file meta names. None when
    the bytes have no file meta or a deflated dataset: the caller then needs a real parser.
    Values are returned undecoded; the caller decides what they must be.
    """
    if data[128:132] != b"DICM":
        return None  # no file meta: the encoding is unknown, parse_header decides
    walker = _Walker(data, implicit=False, little=True, wanted=wanted | {TRANSFER_SYNTAX_TAG})
    position = walker.meta(132)
    syntax = transfer_syntax if transfer_syntax is not None else \
        walker.found.get(TRANSFER_SYNTAX_TAG, b"").decode("latin-1").strip("\0 ")
    if syntax in _DEFLATED:
        return None
    walker.mode(implicit=syntax == _IMPLICIT_LE, little=syntax != _BIG_ENDIAN)
    walker.dataset(position, len(data), depth=0, trailing_zeros=True)
    return walker.found


class _Walker:
    def __init__(self, data: bytes, implicit: bool, little: bool,
                 wanted: frozenset[int] = frozenset()) -> None:
        self.data = data
        self.wanted = wanted
        self.found: dict[int, bytes] = {}
        self.mode(implicit, little)

    def mode(self, implicit: bool, little: bool) -> None:
        """Precompiled layouts for one encoding (the walk reads a few hundred headers)."""
        self.implicit, self.little = implicit, little
        order = "<" if little or implicit else ">"
        self.header = struct.Struct(order + "HHL")      # implicit element, item, delimiter
        self.short = struct.Struct(order + "HH2sH")     # explicit VR, 2-byte length
        self.long_length = struct.Struct(order + "L")   # explicit VR, 4-byte length at +8
        self.meta_group = struct.pack(order + "H", 0x0002)

    def meta(self, position: int) -> int:
        """Walk the file meta (Explicit VR Little Endian); return where the dataset starts.

        The meta ends where its group length says, so group-0002 elements smuggled into the
        dataset after it are seen as what they are (``dataset`` refuses them).
        """
        end = len(self.data)
        if self.data[position:position + 6] == b"\x02\x00\x00\x00UL":
            (length,) = struct.unpack_from("<L", self.data, position + 8)
            end = min(position + 12 + length, end)
        while position < end and self.data[position:position + 2] == b"\x02\x00":
            position = self._element(position, end, depth=0)
        return position

    def dataset(self, position: int, end: int, depth: int, trailing_zeros: bool = False,
                until_item_end: bool = False) -> int:
        """Walk elements from ``position`` to ``end`` (or to an Item Delimitation Item)."""
        data = self.data
        while position < end:
            if trailing_zeros and data[position:position + 4] == bytes(4) and not any(
                    data[position:end]):
                return end  # zero padding after the last element, as some writers leave
            if position + 8 > end:
                raise self._error(position, "an element header is cut short")
            if data[position:position + 2] == b"\xfe\xff" or data[position:position + 2] == \
                    b"\xff\xfe":
                group, element, _ = self.header.unpack_from(data, position)
                tag = group << 16 | element
                if tag == _ITEM_END and until_item_end:
                    return position + 8
                if tag >> 16 == 0xFFFE:
                    raise self._error(position, f"unexpected delimiter {_text(tag)} in a dataset")
            elif depth == 0 and data[position:position + 2] == self.meta_group:
                raise self._error(position, "a File Meta (0002,xxxx) element inside the dataset")
            position = self._element(position, end, depth)
        if until_item_end:
            raise self._error(position, "an item of undefined length never ends")
        return position

    def _element(self, position: int, end: int, depth: int) -> int:
        if self.implicit:
            group, element, length = self.header.unpack_from(self.data, position)
            vr = b""
            position += 8
        else:
            group, element, vr, length = self.short.unpack_from(self.data, position)
            if vr in _LONG:
                if position + 12 > end:
                    raise self._error(position, f"{_text(group << 16 | element)}: element "
                                                "header is cut short")
                (length,) = self.long_length.unpack_from(self.data, position + 8)
                position += 12
            elif vr in _VRS:
                position += 8
            else:
                raise self._error(position, f"{_text(group << 16 | element)} has unknown VR "
                                            f"{vr!r}")
        if length == _UNDEFINED:
            return self._undefined(position, end, depth, group << 16 | element, vr)
        if length > end - position:
            raise self._error(position, f"{_text(group << 16 | element)} claims {length} bytes, "
                                        f"{end - position} remain: the dataset is truncated")
        size = _FIXED_SIZE.get(vr)
        if size is not None and length % size:
            raise self._error(position, f"{_text(group << 16 | element)} ({vr.decode()}) has "
                                        f"length {length}, not a multiple of {size}")
        if depth == 0 and group << 16 | element in self.wanted:
            self.found.setdefault(group << 16 | element, self.data[position:position + length])
        if vr == b"SQ":
            self._sequence(position, position + length, depth + 1, group << 16 | element,
                           defined=True)
        return position + length

    def _undefined(self, position: int, end: int, depth: int, tag: int, vr: bytes) -> int:
        if tag == _PIXEL_DATA:
            return self._fragments(position, end, tag)
        if vr not in (b"", b"SQ", b"UN"):
            raise self._error(position, f"{_text(tag)} ({vr.decode()}) has undefined length")
        if vr != b"UN":
            return self._sequence(position, end, depth + 1, tag, defined=False)
        saved = self.implicit, self.little  # PS3.5 6.2.2: items of UN are Implicit VR LE
        self.mode(True, True)
        try:
            return self._sequence(position, end, depth + 1, tag, defined=False)
        finally:
            self.mode(*saved)

    def _sequence(self, position: int, end: int, depth: int, tag: int, defined: bool) -> int:
        if depth > MAX_DEPTH:
            raise self._error(position, f"sequences nested deeper than {MAX_DEPTH} levels")
        while position < end:
            if position + 8 > end:
                raise self._error(position, f"{_text(tag)}: an item header is cut short")
            group, element, length = self.header.unpack_from(self.data, position)
            item = group << 16 | element
            position += 8
            if item == _SEQUENCE_END and not defined:
                return position
            if item != _ITEM:
                raise self._error(position, f"{_text(tag)}: expected an item, found "
                                            f"{_text(item)}")
            if length == _UNDEFINED:
                position = self.dataset(position, end, depth, until_item_end=True)
            elif length > end - position:
                raise self._error(position, f"{_text(tag)}: an item claims {length} bytes, "
                                            f"{end - position} remain")
            else:
                position = self.dataset(position, position + length, depth)
        if not defined:
            raise self._error(position, f"{_text(tag)}: sequence of undefined length never ends")
        return position

    def _fragments(self, position: int, end: int, tag: int) -> int:
        """Encapsulated Pixel Data: items of defined length, then a Sequence Delimiter."""
        while position + 8 <= end:
            group, element, length = self.header.unpack_from(self.data, position)
            item = group << 16 | element
            position += 8
            if item == _SEQUENCE_END:
                return position
            if item != _ITEM or length == _UNDEFINED:
                raise self._error(position, f"{_text(tag)}: expected a fragment item, found "
                                            f"{_text(item)}")
            if length > end - position:
                raise self._error(position, f"{_text(tag)}: a fragment claims {length} bytes, "
                                            f"{end - position} remain: the dataset is truncated")
            position += length
        raise self._error(position, "encapsulated Pixel Data has no Sequence Delimitation Item")

    def _error(self, position: int, message: str) -> InputRejected:
        return InputRejected(f"malformed dataset at byte {position}: {message}")


def _text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# -- the file meta written in front of a received dataset ------------------------------

def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element (short or long length form)."""
    tag = struct.pack("<HH", group, element)
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def _padded(value: str, pad: bytes, limit: int = 64) -> bytes:
    raw = value.encode("ascii", "replace")[:limit]
    return raw + pad if len(raw) % 2 else raw


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                  source_ae_title: str = "") -> bytes:
    """Preamble, 'DICM' and File Meta Information for a dataset received as it was sent.

    Written by hand rather than through pydicom's FileMetaDataset because the C-STORE hot
    path builds one per instance and pydicom's validation and copies cost milliseconds each.
    """
    elements = b"".join((
        _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, 0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
        _element(0x0002, 0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
        _element(0x0002, 0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
        _element(0x0002, 0x0012, b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
        _element(0x0002, 0x0013, b"SH", _padded(IMPLEMENTATION_VERSION_NAME, b" ", 16)),
        _element(0x0002, 0x0016, b"AE", _padded(source_ae_title, b" ", 16))
        if source_ae_title else b"",
    ))
    length = _element(0x0002, 0x0000, b"UL", struct.pack("<I", len(elements)))
    return b"\x00" * 128 + b"DICM" + length + elements


# -- the header the index needs ---------------------------------------------------------

@dataclass(frozen=True)
class InstanceHeader:
    """What the index needs of a received instance (parsed without its pixels)."""

    sop_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    modality: str
    transfer_syntax: str


_HEADER_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
_LAST_HEADER_TAG = BaseTag(0x0020000E)  # SeriesInstanceUID: the last tag the index needs
_HEADER_TAGS: list[BaseTag | int] = [
    BaseTag(0x00080005), BaseTag(0x00080016), BaseTag(0x00080018), BaseTag(0x00080060),
    BaseTag(0x0020000D), _LAST_HEADER_TAG,
]

def parse_header(data: bytes) -> InstanceHeader:
    """The UIDs the index needs, parsed up to SeriesInstanceUID only (never the pixels).

    The rest of the dataset is walked element header by element header (``walk_part10``), so a
    truncated or lying dataset is refused although its values are never decoded.
    Raises InputRejected naming what is missing or unreadable.
    """
    header = _header_from_walk(data)
    return header if header is not None else _header_from_pydicom(data)


def _header_from_pydicom(data: bytes) -> InstanceHeader:
    """pydicom's reader: for what the walk cannot read (no file meta, deflated)."""
    try:
        ds = pydicom.filereader.read_partial(
            io.BytesIO(data), stop_when=lambda tag, vr, length: tag > _LAST_HEADER_TAG,
            defer_size=1024, specific_tags=_HEADER_TAGS)
    except Exception as exc:  # pydicom raises many types for damaged streams
        raise InputRejected(f"dataset cannot be parsed: {type(exc).__name__}: {exc}") from exc
    values = {}
    for keyword in _HEADER_KEYWORDS:
        try:
            value = str(ds.get(keyword, "") or "").strip()
        except Exception as exc:  # a value that cannot be decoded
            raise InputRejected(f"{keyword} cannot be read: {exc}") from exc
        if not value:
            raise InputRejected(f"{keyword} is missing or empty")
        if len(value) > 64:
            raise InputRejected(f"{keyword} is {len(value)} characters long (at most 64)")
        values[keyword] = value
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    check_part10(data, syntax)
    return InstanceHeader(
        sop_uid=values["SOPInstanceUID"], sop_class_uid=values["SOPClassUID"],
        series_uid=values["SeriesInstanceUID"], study_uid=values["StudyInstanceUID"],
        modality=str(ds.get("Modality", "") or "")[:16], transfer_syntax=syntax,
    )


_WALKED_TAGS = {0x00080016: "SOPClassUID", 0x00080018: "SOPInstanceUID",
                0x0020000E: "SeriesInstanceUID", 0x0020000D: "StudyInstanceUID"}
_MODALITY_TAG = 0x00080060


def _header_from_walk(data: bytes) -> InstanceHeader | None:
    """The same header from the structure walk alone (~4x cheaper than pydicom's reader).

    UIDs and Modality are plain ASCII by definition (UI, CS), so their raw bytes are the
    value; anything that needs a real parser (no file meta, deflated) returns None.
    """
    found = walk_part10(data, frozenset(_WALKED_TAGS) | {_MODALITY_TAG})
    if found is None:
        return None
    values = {}
    for tag, keyword in _WALKED_TAGS.items():
        value = found.get(tag, b"").decode("latin-1").strip("\0 \t\r\n")
        if "\\" in value or not (value.isascii() and value.isprintable()):
            return None  # several values, binary or non-ASCII bytes: read them as pydicom
            # (and the worker, and the C-STORE request's decoder) will, so all agree
        if not value:
            raise InputRejected(f"{keyword} is missing or empty")
        if len(value) > 64:
            raise InputRejected(f"{keyword} is {len(value)} characters long (at most 64)")
        values[keyword] = value
    syntax = found.get(TRANSFER_SYNTAX_TAG, b"").decode("latin-1").strip("\0 ")
    modality = found.get(_MODALITY_TAG, b"").decode("latin-1").strip("\0 ")
    return InstanceHeader(
        sop_uid=values["SOPInstanceUID"], sop_class_uid=values["SOPClassUID"],
        series_uid=values["SeriesInstanceUID"], study_uid=values["StudyInstanceUID"],
        modality=modality[:16], transfer_syntax=syntax,
    )


def received_part10(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str,
                    source_ae_title: str, dataset: bytes) -> tuple[bytes, InstanceHeader]:
    """A received C-STORE dataset as the Part 10 bytes the spool keeps, and its header.

    Raises InputRejected when the dataset is malformed or lacks a UID the index needs.
    """
    data = part10_header(sop_class_uid, sop_instance_uid, transfer_syntax,
                         source_ae_title) + dataset
    return data, parse_header(data)
