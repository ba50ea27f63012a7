"""Enhanced multi-frame images (Enhanced MR/CT, Legacy Converted) read as a stack of frames.

Where a classic series keeps geometry and rescale in each file, an Enhanced object keeps them
in functional groups, per frame or shared by all frames. This module reads those groups,
checks them before any pixel is decoded, orders the frames along the slice normal (as
``series.order_slices`` does for files) and decodes one frame at a time: from an uncompressed
or encapsulated file the frame's bytes are read alone, so a 500-frame object never sits in
memory whole. The node (``enhance``) and the training module read through this one reader.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.filereader import read_file_meta_info
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicomnode.errors import InputRejected
from dicomnode.pixels import (
    MAX_PIXELS_PER_FRAME,
    PixelFormat,
    modality_values,
    pixel_format,
)
from dicomnode.series import ORIENTATION_TOLERANCE

ENHANCED_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
}
PIXEL_DATA = 0x7FE00010
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_SAME_POSITION_MM = 1e-3
# Pixel Data larger than this stays in the file until its frames are read.
_DEFER_BYTES = 1 << 20
# Copied into each frame's one-frame dataset: what pixels.py needs to check and decode it.
_FRAME_KEYWORDS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "Modality",
    "PixelPaddingValue", "PixelPaddingRangeLimit", "LossyImageCompression",
    "LossyImageCompressionMethod",
)


def is_enhanced(sop_class_uid: object) -> bool:
    """True for the SOP classes this module reads (their frames are derived in their IOD)."""
    return str(sop_class_uid or "").strip() in ENHANCED_SOP_CLASSES


@dataclass(frozen=True)
class Frame:
    """One frame: where it lies (patient mm), its pixel spacing and its rescale."""

    index: int  # 0-based position in Pixel Data; ReferencedFrameNumber is index + 1
    position: tuple[float, float, float]
    orientation: tuple[float, ...]  # row direction (3) then column direction (3)
    spacing: tuple[float, float]  # (between rows, between columns) in mm, as PixelSpacing
    slope: float
    intercept: float
    rescale_type: str
    stack: tuple[str, ...]  # frames with another key belong to another stack (echo, time)

    @property
    def number(self) -> int:
        return self.index + 1


@dataclass
class MultiFrame:
    """One Enhanced object: its header (no Pixel Data), frames in slice order, and its pixels."""

    header: Dataset
    fmt: PixelFormat  # of the first frame in Pixel Data (rescale: see ``frame_format``)
    frames: list[Frame]  # ordered along the slice normal, stack by stack
    pixels: _Pixels
    path: Path | None = None

    @property
    def sop_class_name(self) -> str:
        return ENHANCED_SOP_CLASSES.get(str(self.header.SOPClassUID), "multi-frame")

    @property
    def number_of_frames(self) -> int:
        return len(self.frames)

    def stacks(self) -> Iterator[list[Frame]]:
        """Runs of frames of one stack (one echo, one time point), each along the normal."""
        run: list[Frame] = []
        for frame in self.frames:
            if run and frame.stack != run[-1].stack:
                yield run
                run = []
            run.append(frame)
        if run:
            yield run

    def frame_format(self, frame: Frame) -> PixelFormat:
        """The frame's storage: the object's, with the frame's own rescale."""
        return replace(self.fmt, slope=frame.slope, intercept=frame.intercept)

    def frame_dataset(self, frame: Frame) -> Dataset:
        """A one-frame dataset holding ``frame``'s encoded pixels and its rescale.

        It goes through exactly the single-frame checks and decoders of ``pixels``; a frame
        whose codestream contradicts the header is refused as a single image would be.
        """
        return _one_frame(self.header, self.pixels, frame)

    def modality_values(self, frame: Frame) -> np.ndarray:
        """The frame decoded and rescaled (HU for CT), as ``pixels.modality_values``."""
        ds = self.frame_dataset(frame)
        return modality_values(ds, self.frame_format(frame))

    def volume(self) -> np.ndarray:
        """Every frame's modality values (N, Rows, Columns) float32, in slice order."""
        volume = np.empty((len(self.frames), self.fmt.rows, self.fmt.columns), np.float32)
        for k, frame in enumerate(self.frames):
            volume[k] = self.modality_values(frame)
        return volume


def read_multiframe(source: str | Path | Dataset) -> MultiFrame:
    """Read and check an Enhanced object's header; its frames are decoded on demand.

    ``source`` is a file (its Pixel Data stays there: frames are read one at a time) or a
    dataset already in memory. Raises InputRejected, naming the attribute and the frame, for
    anything that does not make one decodable stack of parallel frames of one size.
    """
    if isinstance(source, Dataset):
        header, pixels, path = source, _pixels_in_memory(source), None
    else:
        path = Path(source)
        header, pixels = _read_file(path)
    sop_class = str(header.get("SOPClassUID", "") or "").strip()
    if sop_class not in ENHANCED_SOP_CLASSES:
        raise InputRejected(f"SOP Class {sop_class or 'missing'!r} is not an Enhanced MR/CT "
                            "image: its frames are not read as a stack")
    count = _frame_count(header)
    per_frame = _value(header, "PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise InputRejected(
            "PerFrameFunctionalGroupsSequence (5200,9230) is missing or empty: an "
            f"{ENHANCED_SOP_CLASSES[sop_class]} object places its frames through it")
    if len(per_frame) != count:
        raise InputRejected(
            f"NumberOfFrames is {count} but PerFrameFunctionalGroupsSequence has "
            f"{len(per_frame)} item(s): the header contradicts itself")
    shared = _value(header, "SharedFunctionalGroupsSequence")
    shared_item = shared[0] if shared else Dataset()
    _rows, _columns, frame_bytes = _frame_size(header)
    pixels.check(count, frame_bytes)
    frames = [_frame(k, item, shared_item, header) for k, item in enumerate(per_frame)]
    _check_one_stack(frames)
    first = frames[0]
    fmt = pixel_format(_one_frame(header, pixels, first))
    for frame in frames:  # every frame's rescale must map into float32, as the first one's
        low, high = replace(fmt, slope=frame.slope, intercept=frame.intercept).modality_range
        if not (abs(low) < _FLOAT32_MAX and abs(high) < _FLOAT32_MAX):
            raise InputRejected(
                f"frame {frame.number}: RescaleSlope {frame.slope:g} and RescaleIntercept "
                f"{frame.intercept:g} give modality values beyond what float32 holds")
    return MultiFrame(header, fmt, _ordered(frames), pixels, path)


# -- the header ----------------------------------------------------------------------------------

def _read_file(path: Path) -> tuple[Dataset, _Pixels]:
    try:
        meta = read_file_meta_info(path)
        syntax = UID(str(meta.get("TransferSyntaxUID", "") or ""))
        deflated = syntax == DeflatedExplicitVRLittleEndian
        # A deflated file has no byte offsets to seek to: read it whole (rare, and small).
        header = pydicom.dcmread(path, defer_size=None if deflated else _DEFER_BYTES)
        for tag in tuple(header.keys()):  # values convert lazily: meet malformed ones here
            if tag != PIXEL_DATA:
                for _ in _walk(header[tag]):
                    pass
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InputRejected(f"cannot read {path.name}: {type(exc).__name__}: {exc}") from exc
    if PIXEL_DATA not in header:
        raise InputRejected("no Pixel Data (7FE0,0010): not an image, or the file is truncated")
    raw = header.get_item(PIXEL_DATA, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is None:
        pixels = _Pixels(_transfer_syntax(header), path=path, offset=raw.value_tell,
                         length=raw.length, extended=_extended_offsets(header))
        del header[PIXEL_DATA]  # the header never reads it: frames come from the file
        return header, pixels
    return header, _pixels_in_memory(header)


def _walk(element: object) -> Iterator[object]:
    value = getattr(element, "value", None)
    yield value
    if getattr(element, "VR", None) == "SQ":
        for item in value or []:
            yield from item.iterall()


def _frame_count(header: Dataset) -> int:
    value = _value(header, "NumberOfFrames")
    if value is None or value == "":
        raise InputRejected("NumberOfFrames is missing: an Enhanced image must say how many "
                            "frames it holds")
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputRejected(f"NumberOfFrames is {value!r}: expected one integer")
    if value < 1:
        raise InputRejected(f"NumberOfFrames is {value}: expected at least 1")
    return int(value)


def _frame_size(header: Dataset) -> tuple[int, int, int]:
    """(Rows, Columns, bytes per native frame), checked before anything is read or allocated."""
    values = {}
    for keyword in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel"):
        value = _value(header, keyword)
        if keyword == "SamplesPerPixel" and value is None:
            value = 1
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputRejected(f"{keyword} is {value!r}: expected one integer")
        values[keyword] = int(value)
    rows, columns = values["Rows"], values["Columns"]
    if rows < 1 or columns < 1 or rows * columns > MAX_PIXELS_PER_FRAME:
        raise InputRejected(f"Rows x Columns is {rows} x {columns}: expected 1 .. "
                            f"{MAX_PIXELS_PER_FRAME} pixels per frame")
    if values["BitsAllocated"] not in (8, 16, 32):
        raise InputRejected(f"BitsAllocated is {values['BitsAllocated']}: expected 8, 16 or 32")
    if values["SamplesPerPixel"] != 1:
        raise InputRejected(f"SamplesPerPixel is {values['SamplesPerPixel']}: models take "
                            "grayscale (one sample per pixel) images only")
    return rows, columns, rows * columns * values["BitsAllocated"] // 8


def _frame(index: int, item: Dataset, shared: Dataset, header: Dataset) -> Frame:
    """One frame's geometry and rescale from its per-frame item, else the shared item."""
    number = index + 1
    position = _numbers(_group(item, shared, "PlanePositionSequence"), "ImagePositionPatient",
                        3, number)
    orientation = _numbers(_group(item, shared, "PlaneOrientationSequence"),
                           "ImageOrientationPatient", 6, number)
    spacing = _numbers(_group(item, shared, "PixelMeasuresSequence"), "PixelSpacing", 2, number)
    if not all(v > 0 for v in spacing):
        raise InputRejected(f"frame {number}: PixelSpacing is {list(spacing)}: expected two "
                            "positive numbers (mm)")
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    if not (abs(np.linalg.norm(row) - 1) < 0.01 and abs(np.linalg.norm(column) - 1) < 0.01
            and abs(float(np.dot(row, column))) < 0.01):
        raise InputRejected(f"frame {number}: ImageOrientationPatient {list(orientation)} is "
                            "not two perpendicular unit vectors")
    transform = _group(item, shared, "PixelValueTransformationSequence")
    slope = _number(transform, "RescaleSlope", _number(header, "RescaleSlope", 1.0, number),
                    number)
    intercept = _number(transform, "RescaleIntercept",
                        _number(header, "RescaleIntercept", 0.0, number), number)
    rescale_type = str(_value(transform, "RescaleType") or "").strip().upper() \
        if transform is not None else ""
    return Frame(index, (position[0], position[1], position[2]), orientation,
                 (spacing[0], spacing[1]), slope, intercept, rescale_type, _stack_key(item))


def _group(item: Dataset, shared: Dataset, keyword: str) -> Dataset | None:
    """The first item of functional group ``keyword``: per-frame first, then shared."""
    for where in (item, shared):
        sequence = _value(where, keyword)
        if sequence:
            return sequence[0]
    return None


def _stack_key(item: Dataset) -> tuple[str, ...]:
    """What tells stacks apart inside one object: Stack ID, temporal position, echo time."""
    content = _value(item, "FrameContentSequence")
    content = content[0] if content else Dataset()
    echo = _value(item, "MREchoSequence")
    echo_time = _value(echo[0], "EffectiveEchoTime") if echo else None
    return (str(_value(content, "StackID") or ""),
            str(_value(content, "TemporalPositionIndex") or ""), str(echo_time or ""))


def _check_one_stack(frames: list[Frame]) -> None:
    """Refuse frames of different orientation or pixel spacing: one object, one grid."""
    first = frames[0]
    for frame in frames[1:]:
        if not np.allclose(first.orientation, frame.orientation, atol=ORIENTATION_TOLERANCE):
            raise InputRejected(
                f"frames {first.number} and {frame.number} have different "
                f"ImageOrientationPatient ({_text(first.orientation)} and "
                f"{_text(frame.orientation)}): the object mixes planes (a localizer?); only "
                "objects whose frames are parallel are derived")
        if not np.allclose(first.spacing, frame.spacing, rtol=1e-4, atol=1e-6):
            raise InputRejected(
                f"frames {first.number} and {frame.number} have different PixelSpacing "
                f"({_text(first.spacing)} and {_text(frame.spacing)} mm): frames of "
                "different size in one object are not derived")


def _ordered(frames: list[Frame]) -> list[Frame]:
    """Stack by stack (in order of first appearance), each along the slice normal."""
    row, column = np.asarray(frames[0].orientation[:3]), np.asarray(frames[0].orientation[3:])
    normal = np.cross(row, column)
    stacks: dict[tuple[str, ...], list[Frame]] = {}
    for frame in frames:
        stacks.setdefault(frame.stack, []).append(frame)
    ordered = []
    for run in stacks.values():
        run = sorted(run, key=lambda f: (float(np.dot(normal, f.position)), f.index))
        for before, after in itertools.pairwise(run):
            if np.allclose(before.position, after.position, atol=_SAME_POSITION_MM):
                raise InputRejected(
                    f"frames {before.number} and {after.number} lie at the same position "
                    f"({_text(after.position)}) in one stack (same Stack ID, temporal position "
                    "and echo): the object is not one regular stack of frames")
        ordered.extend(run)
    return ordered


def _numbers(item: Dataset | None, keyword: str, count: int, number: int) -> tuple[float, ...]:
    where = "per-frame or shared functional groups"
    value = _value(item, keyword) if item is not None else None
    if value is None or value == "":
        raise InputRejected(f"frame {number} has no {keyword} in its {where}: an Enhanced "
                            "image places every frame through them")
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    try:
        numbers = tuple(float(v) for v in values)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputRejected(f"frame {number}: {keyword} is {value!r}: expected {count} "
                            "numbers") from None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise InputRejected(f"frame {number}: {keyword} is {list(numbers)}: expected {count} "
                            "finite numbers")
    return numbers


def _number(item: Dataset | None, keyword: str, default: float, number: int) -> float:
    value = _value(item, keyword) if item is not None else None
    if value is None or value == "":
        return default
    try:
        result = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputRejected(f"frame {number}: {keyword} is {value!r}: expected one "
                            "number") from None
    if not math.isfinite(result) or (keyword == "RescaleSlope" and result == 0):
        raise InputRejected(f"frame {number}: {keyword} is {result}: expected a finite"
                            f"{' non-zero' if keyword == 'RescaleSlope' else ''} number")
    return result


def _value(ds: Dataset | None, keyword: str) -> object:
    if ds is None:
        return None
    try:
        return ds.get(keyword)
    except Exception as exc:  # pydicom's converters raise many types for malformed values
        raise InputRejected(f"{keyword} cannot be read: {type(exc).__name__}: {exc}") from exc


def _text(values: tuple[float, ...]) -> str:
    return "\\".join(f"{v:g}" for v in values)


# -- the pixels ----------------------------------------------------------------------------------

class _Pixels:
    """Encoded frames, from the file (read a frame at a time) or from bytes in memory."""

    def __init__(self, syntax: UID, path: Path | None = None, offset: int = 0,
                 length: int = 0, data: bytes | None = None,
                 extended: tuple[bytes, bytes] | None = None) -> None:
        self.syntax, self.path, self.offset, self.length = syntax, path, offset, length
        self.data, self.extended = data, extended
        self.count, self.frame_bytes = 0, 0

    @property
    def encapsulated(self) -> bool:
        return self.syntax.is_compressed

    def check(self, count: int, frame_bytes: int) -> None:
        """NumberOfFrames against what Pixel Data holds (native: its exact length)."""
        self.count, self.frame_bytes = count, frame_bytes
        if self.encapsulated:
            return  # each frame's codestream is checked when it is read
        found = len(self.data) if self.data is not None else self.length
        needed = count * frame_bytes
        if found < needed:
            raise InputRejected(
                f"Pixel Data holds {found} bytes but NumberOfFrames {count} frames of "
                f"{frame_bytes} bytes need {needed}: NumberOfFrames is larger than the data, "
                "or the file is truncated")
        if found > needed + 1:
            raise InputRejected(
                f"Pixel Data holds {found} bytes but NumberOfFrames {count} frames of "
                f"{frame_bytes} bytes need {needed}: NumberOfFrames is smaller than the data")

    def frame(self, index: int) -> bytes:
        """Frame ``index`` as stored (native bytes or one frame's codestream)."""
        try:
            if self.data is not None:
                return self._frame_from(self.data, index)
            assert self.path is not None
            with self.path.open("rb") as handle:
                if self.encapsulated:
                    handle.seek(self.offset)
                    return self._frame_from(handle, index)
                handle.seek(self.offset + index * self.frame_bytes)
                data = handle.read(self.frame_bytes)
        except InputRejected:
            raise
        except Exception as exc:  # malformed items or fragments, a file gone short
            raise InputRejected(f"frame {index + 1}: Pixel Data cannot be read: "
                                f"{type(exc).__name__}: {exc}") from exc
        if len(data) != self.frame_bytes:
            raise InputRejected(f"frame {index + 1}: Pixel Data ends before the frame does: "
                                "the file is truncated")
        return data

    def _frame_from(self, buffer: object, index: int) -> bytes:
        if self.encapsulated:
            return get_frame(buffer, index, number_of_frames=self.count,  # type: ignore[arg-type]
                             extended_offsets=self.extended)
        start = index * self.frame_bytes
        return bytes(buffer[start:start + self.frame_bytes])  # type: ignore[index]


def _pixels_in_memory(ds: Dataset) -> _Pixels:
    if "PixelData" not in ds:
        raise InputRejected("no Pixel Data (7FE0,0010): not an image, or the file is truncated")
    data = ds.PixelData
    if not data:
        raise InputRejected("Pixel Data (7FE0,0010) is empty")
    return _Pixels(_transfer_syntax(ds), data=data, extended=_extended_offsets(ds))


def _extended_offsets(ds: Dataset) -> tuple[bytes, bytes] | None:
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        return ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths
    return None


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if meta is not None and len(meta) and not uid:
        raise InputRejected("the file meta has no Transfer Syntax UID (0002,0010): the pixel "
                            "encoding is unknown")
    syntax = UID(str(uid)) if uid else UID("1.2.840.10008.1.2")
    if not syntax.is_transfer_syntax:
        raise InputRejected(f"Transfer Syntax UID {str(syntax)!r} is not a known transfer "
                            "syntax")
    return syntax


def _frame_header(header: Dataset, frame: Frame) -> Dataset:
    """A one-frame image header: the object's pixel description with the frame's rescale;
    pydicom's decoders read the Transfer Syntax from its file meta."""
    ds = Dataset()
    for keyword in _FRAME_KEYWORDS:
        if keyword in header:
            ds[keyword] = header[keyword]
    ds.RescaleSlope, ds.RescaleIntercept = frame.slope, frame.intercept
    ds.file_meta = FileMetaDataset()
    meta = getattr(header, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    ds.file_meta.TransferSyntaxUID = syntax or "1.2.840.10008.1.2"
    return ds


def _one_frame(header: Dataset, pixels: _Pixels, frame: Frame) -> Dataset:
    ds = _frame_header(header, frame)
    data = pixels.frame(frame.index)
    ds.PixelData = encapsulate([data]) if pixels.encapsulated else data
    if pixels.encapsulated:
        ds["PixelData"].VR = "OB"
    return ds
