"""Pixel data in and out: stored values <-> modality values, with every check done first.

Never guess what pixels mean: BitsStored, PixelRepresentation, Rescale Slope/Intercept and
PhotometricInterpretation decide, and a header that contradicts its Pixel Data is refused
before anything is allocated.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from dicomnode.errors import InputRejected

# Larger frames are refused before decoding: 8192 x 8192 covers every radiograph and
# whole-body CT/MR matrix in clinical use, and keeps one frame's float32 copy under 256 MiB.
MAX_PIXELS_PER_FRAME = 8192 * 8192
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")

LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000 (lossy allowed)
    "1.2.840.10008.1.2.4.203": "ISO_15444_1",  # HTJ2K
}


@dataclass(frozen=True)
class PixelFormat:
    """How an image stores its values: everything needed to map back after processing."""

    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    slope: float
    intercept: float
    photometric: str

    @property
    def stored_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1

    @property
    def modality_range(self) -> tuple[float, float]:
        a, b = (v * self.slope + self.intercept for v in self.stored_range)
        return (min(a, b), max(a, b))

    @property
    def stored_dtype(self) -> np.dtype:
        kind = "i" if self.signed else "u"
        return np.dtype(f"{kind}{self.bits_allocated // 8}")

    @property
    def inverted(self) -> bool:
        """MONOCHROME1: the lowest value is displayed white."""
        return self.photometric == "MONOCHROME1"


def pixel_format(ds: Dataset) -> PixelFormat:
    """Check that ``ds`` holds one grayscale frame we can process and describe its storage.

    Every check happens before anything is decoded or allocated, and the header is trusted no
    further than it was checked: values of the wrong type, zero where zero is meaningless, and
    codestreams whose own frame size contradicts Rows x Columns are refused.
    Raises InputRejected naming the attribute and the value found.
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InputRejected("Float Pixel Data is not supported; only integer Pixel Data")
        raise InputRejected("no Pixel Data (7FE0,0010): not an image, or the file is truncated")
    if not _value(ds, "PixelData"):
        raise InputRejected("Pixel Data (7FE0,0010) is empty")
    rows, columns = _integer(ds, "Rows"), _integer(ds, "Columns")
    bits_allocated, bits_stored = _integer(ds, "BitsAllocated"), _integer(ds, "BitsStored")
    representation = _integer(ds, "PixelRepresentation")
    samples = _integer(ds, "SamplesPerPixel", default=1)
    frames = _integer(ds, "NumberOfFrames", default=1)
    photometric = str(_value(ds, "PhotometricInterpretation") or "").strip().upper()

    if samples != 1 or photometric not in GRAYSCALE:
        raise InputRejected(
            f"PhotometricInterpretation {photometric or 'missing'!r} with SamplesPerPixel "
            f"{samples}: models take grayscale (MONOCHROME1/MONOCHROME2) images only"
        )
    if rows < 1 or columns < 1:
        raise InputRejected(f"Rows x Columns is {rows} x {columns}: an image needs both >= 1")
    if rows * columns > MAX_PIXELS_PER_FRAME:
        raise InputRejected(
            f"Rows x Columns is {rows} x {columns}: larger than the supported "
            f"{MAX_PIXELS_PER_FRAME} pixels per frame"
        )
    if frames < 1:
        raise InputRejected(f"NumberOfFrames is {frames}: an image holds at least one frame")
    if frames != 1:
        sop_class = UID(str(_value(ds, "SOPClassUID") or "")).name or "this SOP class"
        if "Enhanced" in sop_class:
            raise InputRejected(f"NumberOfFrames is {frames}: multi-frame {sop_class} objects "
                                "are read frame by frame (dicomnode.multiframe), not as one image")
        raise InputRejected(
            f"NumberOfFrames is {frames}: multi-frame images are derived only as Enhanced "
            f"MR/CT (or Legacy Converted Enhanced) objects, not as {sop_class}"
        )
    if bits_allocated not in (8, 16, 32):
        raise InputRejected(f"BitsAllocated is {bits_allocated}: expected 8, 16 or 32")
    if not 1 <= bits_stored <= bits_allocated:
        raise InputRejected(
            f"BitsStored is {bits_stored} with BitsAllocated {bits_allocated}: "
            "BitsStored must be 1..BitsAllocated"
        )
    if representation not in (0, 1):
        raise InputRejected(f"PixelRepresentation is {representation}: expected 0 or 1")
    if "ModalityLUTSequence" in ds:
        raise InputRejected("a Modality LUT Sequence is present: only linear rescale is supported")

    meta = getattr(ds, "file_meta", None)
    if meta is not None and len(meta) and "TransferSyntaxUID" not in meta:
        raise InputRejected("the file meta has no Transfer Syntax UID (0002,0010): the pixel "
                            "encoding is unknown")
    transfer_syntax = _transfer_syntax(ds)
    if not transfer_syntax.is_transfer_syntax:
        raise InputRejected(
            f"Transfer Syntax UID {str(transfer_syntax)!r} is not a known transfer syntax"
        )
    if transfer_syntax.is_compressed:
        _check_codestream(ds, transfer_syntax, rows, columns)
    else:
        expected = rows * columns * bits_allocated // 8
        found = len(ds.PixelData)
        if found < expected:
            raise InputRejected(
                f"Pixel Data holds {found} bytes but Rows x Columns x BitsAllocated "
                f"({rows} x {columns} x {bits_allocated}) needs {expected}: the file is truncated"
            )
        if found > expected + 1:  # one trailing byte pads an odd length
            raise InputRejected(
                f"Pixel Data holds {found} bytes but Rows x Columns x BitsAllocated "
                f"({rows} x {columns} x {bits_allocated}) needs {expected}: more than one "
                "frame's worth, with NumberOfFrames absent"
            )

    slope = _number(ds, "RescaleSlope", 1.0)
    intercept = _number(ds, "RescaleIntercept", 0.0)
    if slope == 0.0:
        raise InputRejected("RescaleSlope is 0: every pixel would map to the intercept")
    fmt = PixelFormat(rows, columns, bits_allocated, bits_stored, representation == 1, slope,
                      intercept, photometric)
    if not all(abs(v) < _FLOAT32_MAX for v in fmt.modality_range):
        raise InputRejected(
            f"RescaleSlope {slope:g} and RescaleIntercept {intercept:g} give modality values "
            f"{fmt.modality_range}: beyond what float32 holds"
        )
    return fmt


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _value(ds: Dataset, keyword: str) -> object:
    """An attribute's value; a value pydicom cannot convert is refused, naming the attribute."""
    try:
        return ds.get(keyword)
    except Exception as exc:  # pydicom's converters raise many types for malformed values
        raise InputRejected(f"{keyword} cannot be read: {type(exc).__name__}: {exc}") from exc


def _integer(ds: Dataset, keyword: str, default: int | None = None) -> int:
    """A single integer value: missing (without a default), text or a float is refused."""
    value = _value(ds, keyword)
    if value is None or value == "":
        if default is None:
            raise InputRejected(f"{keyword} is missing: the image header is incomplete")
        return default
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputRejected(f"{keyword} is {value!r}: expected one integer")
    return int(value)


def _number(ds: Dataset, keyword: str, default: float) -> float:
    """A single finite decimal number, or ``default`` when the attribute is absent."""
    value = _value(ds, keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputRejected(f"{keyword} is {value!r}: expected one number") from None
    if not math.isfinite(number):
        raise InputRejected(f"{keyword} is {number}: expected a finite number")
    return number


# Codestream families whose frame header we can read before decoding. Any other compressed
# syntax is refused: its decoder would size its buffers from a header nobody checked.
_JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
         "1.2.840.10008.1.2.4.70"}
_JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}
_JPEG_2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
              "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"}
_RLE = "1.2.840.10008.1.2.5"
_SOF_MARKERS = {*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC),
                *range(0xCD, 0xD0), 0xF7}  # JPEG SOF0-15 (not DHT/JPG/DAC), JPEG-LS SOF55


def _check_codestream(ds: Dataset, syntax: UID, rows: int, columns: int) -> None:
    """Refuse a codestream whose frame header disagrees with Rows x Columns x 1 sample.

    Decoders allocate from the codestream's own header: a 384 x 384 image whose JPEG header
    says 65535 x 65535 made libjpeg take gigabytes before failing.
    """
    if str(syntax) == _RLE:
        return  # the RLE decoder sizes its output from Rows x Columns
    if str(syntax) not in _JPEG | _JPEG_LS | _JPEG_2000:
        raise InputRejected(f"transfer syntax {syntax.name} cannot be decoded by this node")
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as exc:  # malformed items or fragments
        raise InputRejected(f"Pixel Data fragments cannot be read: {exc}") from exc
    if str(syntax) in _JPEG_2000:
        kind, size = "JPEG 2000", _jpeg2000_size(frame)
    else:
        kind, size = ("JPEG-LS" if str(syntax) in _JPEG_LS else "JPEG"), _jpeg_size(frame)
    if size is None:
        raise InputRejected(f"Pixel Data holds no readable {kind} frame header")
    height, width, components = size
    if (height, width, components) != (rows, columns, 1):
        raise InputRejected(
            f"{kind} codestream is {height} x {width} with {components} component(s); "
            f"the header says Rows x Columns {rows} x {columns}, 1 sample"
        )


def _jpeg_size(frame: bytes) -> tuple[int, int, int] | None:
    """(Y, X, Nf) of the first SOF (or JPEG-LS SOF55) segment, walking the marker segments."""
    if frame[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 4 <= len(frame):
        if frame[at] != 0xFF:
            return None
        marker = frame[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(frame[at + 2:at + 4], "big")
        if marker in _SOF_MARKERS and at + 10 <= len(frame):
            y, x = (int.from_bytes(frame[at + i:at + i + 2], "big") for i in (5, 7))
            return y, x, frame[at + 9]
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        at += 2 + length
    return None


def _jpeg2000_size(frame: bytes) -> tuple[int, int, int] | None:
    """(height, width, Csiz) from the SIZ marker that follows SOC (raw codestream or JP2)."""
    at = frame.find(b"\xff\x4f\xff\x51", 0, 4096)
    if at < 0 or at + 42 > len(frame):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", frame, at + 8)
    components = struct.unpack_from(">H", frame, at + 40)[0]
    return ysiz - yosiz, xsiz - xosiz, components


def modality_values(ds: Dataset, fmt: PixelFormat | None = None) -> np.ndarray:
    """Decode the frame and apply the rescale: HU for CT, stored values otherwise (float32)."""
    fmt = fmt or pixel_format(ds)
    try:
        stored = ds.pixel_array
    except Exception as exc:  # the decoders raise many unrelated types for broken streams
        raise InputRejected(
            f"Pixel Data cannot be decoded ({_transfer_syntax(ds).name}): {exc}"
        ) from exc
    except BaseException as exc:
        # A Rust decoder's panic (pylibjpeg-rle overrunning its frame) reaches Python as
        # pyo3's PanicException, a BaseException: uncaught, it ended the worker thread.
        if type(exc).__name__ != "PanicException":
            raise
        raise InputRejected(
            f"Pixel Data cannot be decoded ({_transfer_syntax(ds).name}): decoder panicked: "
            f"{exc}"
        ) from exc
    if stored.shape != (fmt.rows, fmt.columns):
        raise InputRejected(
            f"decoded Pixel Data has shape {stored.shape}, header says "
            f"{fmt.rows} x {fmt.columns}"
        )
    dtype = np.float64 if fmt.bits_stored > 24 else np.float32
    values = stored.astype(dtype)
    if fmt.slope != 1.0 or fmt.intercept != 0.0:
        values = values * dtype(fmt.slope) + dtype(fmt.intercept)
    return values


def stored_values(values: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """Map modality values back to stored integers, rounded and clipped to BitsStored."""
    stored = (np.asarray(values, dtype=np.float64) - fmt.intercept) / fmt.slope
    low, high = fmt.stored_range
    stored = np.clip(np.rint(stored), low, high)
    return stored.astype(fmt.stored_dtype)


def lossy_method(ds: Dataset) -> str | None:
    """None when the source was never lossy-compressed; else the method ("" if unknown).

    Lossy once means lossy forever: by the LossyImageCompression attribute or by the
    transfer syntax the object arrived in.
    """
    by_syntax = LOSSY_METHODS.get(str(_transfer_syntax(ds)))
    if str(ds.get("LossyImageCompression", "")).strip() == "01":
        method = ds.get("LossyImageCompressionMethod")
        if isinstance(method, str):
            return method or by_syntax or ""
        return str(method[0]) if method else by_syntax or ""
    return by_syntax


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else UID("1.2.840.10008.1.2")
