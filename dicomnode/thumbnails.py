"""Before / after / difference thumbnails of a finished series' middle slice (status page).

What a radiologist's eye needs to judge a model at a glance: source and derived image shown
with the *same* window (the source's own Window Center/Width, or its 1st-99th percentiles),
and the signed difference (derived minus source, on the derived grid) in grey around zero.
PNG encoding is a few lines of zlib, so the node needs no imaging library for it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from skimage.transform import resize

from dicomnode.errors import InputRejected

KINDS = ("before", "after", "difference")
MAX_SIDE = 320  # pixels of a thumbnail's longer side


@dataclass(frozen=True)
class Pair:
    """The middle derived object of a job and the source image it was derived from."""

    derived: Path
    source: Path


def middle_pair(derived_files: list[Path], source_path_of: dict[str, Path]) -> Pair:
    """The enhanced file in the middle of the series (by InstanceNumber) and its source.

    Difference objects (ImageType ...\\DIFFERENCE) share their enhanced twin's InstanceNumber;
    they are left out, so "after" is always the enhanced image.
    """
    headers = []
    for path in derived_files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, ValueError):
            continue
        if "DIFFERENCE" in [str(v).upper() for v in (ds.get("ImageType") or [])]:
            continue
        headers.append((int(ds.get("InstanceNumber", 0) or 0), str(path), ds))
    if not headers:
        raise InputRejected("no readable derived object is left for this job")
    headers.sort(key=lambda h: (h[0], h[1]))
    _, path, ds = headers[len(headers) // 2]
    references = ds.get("SourceImageSequence") or []
    for item in references:
        source = source_path_of.get(str(item.get("ReferencedSOPInstanceUID", "")))
        if source is not None and source.exists():
            return Pair(Path(path), source)
    raise InputRejected("the source image of the middle derived slice is no longer in the spool")


def render(pair: Pair) -> dict[str, bytes]:
    """PNG bytes for every kind in KINDS."""
    source_ds = pydicom.dcmread(pair.source)
    derived_ds = pydicom.dcmread(pair.derived)
    source = _middle_frame(source_ds)
    derived = _middle_frame(derived_ds)
    low, high = window(source_ds, source)
    on_grid = resize(source, derived.shape, order=1, preserve_range=True, anti_aliasing=False)
    difference = derived - on_grid
    spread = float(np.percentile(np.abs(difference), 99.5)) or 1.0
    images = {
        "before": _scale(source, low, high),
        "after": _scale(derived, low, high),
        "difference": _scale(difference, -spread, spread),
    }
    return {kind: encode_png(_thumbnail(image)) for kind, image in images.items()}


def window(ds: Dataset, values: np.ndarray) -> tuple[float, float]:
    """The source's first Window Center/Width, else its 1st and 99th percentiles."""
    try:
        center = _first(ds.get("WindowCenter"))
        width = _first(ds.get("WindowWidth"))
    except (TypeError, ValueError):
        center = width = None
    if center is not None and width is not None and width > 0:
        return center - width / 2, center + width / 2
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    return low, high if high > low else low + 1


def _first(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, str | bytes | int | float):
        return float(value)
    return float(next(iter(value)))  # type: ignore[call-overload]


def _middle_frame(ds: Dataset) -> np.ndarray:
    try:
        values = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    except Exception as exc:  # decoders raise many types for a broken stream
        raise InputRejected(f"pixel data cannot be decoded for a thumbnail: {exc}") from exc
    if values.ndim == 3:  # multi-frame: the middle frame
        values = values[values.shape[0] // 2]
    if values.ndim != 2:
        raise InputRejected(f"no thumbnail for pixel data of shape {values.shape}")
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        values = values.max() - values
    return values


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (values - low) / (high - low) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """Scaled so the longer side is MAX_SIDE: before and after are shown at one size.

    A smaller source is enlarged by pixel replication, so the "before" shows its own
    pixels and no interpolation that could pass for the model's work.
    """
    rows, columns = image.shape
    factor = MAX_SIDE / max(rows, columns)
    shape = (max(1, round(rows * factor)), max(1, round(columns * factor)))
    if shape == image.shape:
        return image
    scaled = resize(image.astype(np.float32), shape, order=0 if factor > 1 else 1,
                    preserve_range=True, anti_aliasing=factor < 1)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG of ``image`` (rows x columns, uint8)."""
    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError("encode_png takes a 2-D uint8 array")
    rows, columns = image.shape
    raw = b"".join(b"\x00" + image[r].tobytes() for r in range(rows))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", columns, rows, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
