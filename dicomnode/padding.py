"""Pixel padding (outside a CT's reconstruction circle) stays padding in a derived image.

A source that declares Pixel Padding Value (and, optionally, Pixel Padding Range Limit) marks
pixels that are not part of the image; the derived object keeps those attributes, so its
padding must hold exactly those values too, or viewers, 3D renderers and segmentation tools
would take a network's small changes there (-1523, -1460 around -1500) for real data. The
padding is restored in stored values after the network and its guards, the same place for
every model.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from dicomnode.errors import DeriveError


def padding_range(ds: Dataset) -> tuple[int, int] | None:
    """(low, high) stored values that are padding, or None when the source declares none."""
    signed = ds.get("PixelRepresentation") == 1
    value = _integer(ds.get("PixelPaddingValue"), signed)
    if value is None:
        return None
    limit = _integer(ds.get("PixelPaddingRangeLimit"), signed)
    if limit is None:
        return value, value
    return min(value, limit), max(value, limit)


def keep_padding(source: Dataset, source_stored: np.ndarray, output_stored: np.ndarray,
                 scale: int) -> np.ndarray:
    """``output_stored`` with the source's padding pixels put back, exactly as they were.

    For super-resolution each source pixel covers ``scale`` x ``scale`` output pixels; a padding
    pixel's block gets its value (nearest neighbour, so padding stays one value per block).
    """
    bounds = padding_range(source)
    if bounds is None:
        return output_stored
    mask = (source_stored >= bounds[0]) & (source_stored <= bounds[1])
    if not mask.any():
        return output_stored
    expected = tuple(scale * n for n in source_stored.shape)
    if output_stored.shape != expected:
        raise DeriveError(f"output has shape {output_stored.shape}, expected {expected} for a "
                         f"x{scale} derivation of a {source_stored.shape} source")
    values = source_stored
    if scale > 1:
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
        values = np.repeat(np.repeat(source_stored, scale, axis=0), scale, axis=1)
    result = output_stored.copy()
    result[mask] = values[mask].astype(result.dtype)
    return result


def _integer(value: object, signed: bool) -> int | None:
    """A padding attribute as an integer; None when absent or not one number (bad header).

    Its VR is US or SS as the pixels are; read without that knowledge it is two raw bytes.
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "little", signed=signed) if len(value) == 2 else None
    if isinstance(value, list | tuple):
        value = value[0] if len(value) == 1 else None
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
