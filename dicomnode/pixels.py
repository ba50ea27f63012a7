"""Pixel data in and out: stored values <-> modality values, with every check done first.

Never guess what pixels mean: BitsStored, PixelRepresentation, Rescale Slope/Intercept and
PhotometricInterpretation decide, and a header that contradicts its Pixel Data is refused
before anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
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

    Raises InputRejected naming the attribute and the value found.
    """
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InputRejected("Float Pixel Data is not supported; only integer Pixel Data")
        raise InputRejected("no Pixel Data (7FE0,0010): not an image, or the file is truncated")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation"):
        if ds.get(keyword) is None:
            raise InputRejected(f"{keyword} is missing: the image header is incomplete")
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits_allocated, bits_stored = int(ds.BitsAllocated), int(ds.BitsStored)
    signed = int(ds.PixelRepresentation) == 1

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
    if frames != 1:
        raise InputRejected(
            f"NumberOfFrames is {frames}: multi-frame images are not processed yet "
            "(classic single-frame images only)"
        )
    if bits_allocated not in (8, 16, 32):
        raise InputRejected(f"BitsAllocated is {bits_allocated}: expected 8, 16 or 32")
    if not 1 <= bits_stored <= bits_allocated:
        raise InputRejected(
            f"BitsStored is {bits_stored} with BitsAllocated {bits_allocated}: "
            "BitsStored must be 1..BitsAllocated"
        )
    if "ModalityLUTSequence" in ds:
        raise InputRejected("a Modality LUT Sequence is present: only linear rescale is supported")

    transfer_syntax = _transfer_syntax(ds)
    if not transfer_syntax.is_compressed:
        expected = rows * columns * bits_allocated // 8
        found = len(ds.PixelData)
        if found < expected:
            raise InputRejected(
                f"Pixel Data holds {found} bytes but Rows x Columns x BitsAllocated "
                f"({rows} x {columns} x {bits_allocated}) needs {expected}: the file is truncated"
            )

    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return PixelFormat(rows, columns, bits_allocated, bits_stored, signed, slope, intercept,
                       photometric)


def modality_values(ds: Dataset, fmt: PixelFormat | None = None) -> np.ndarray:
    """Decode the frame and apply the rescale: HU for CT, stored values otherwise (float32)."""
    fmt = fmt or pixel_format(ds)
    try:
        stored = ds.pixel_array
    except Exception as exc:  # the decoders raise many unrelated types for broken streams
        raise InputRejected(
            f"Pixel Data cannot be decoded ({_transfer_syntax(ds).name}): {exc}"
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
