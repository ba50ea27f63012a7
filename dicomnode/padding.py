"""Pixel padding (outside a CT's reconstruction circle) stays padding in a derived image.

A source that declares Pixel Padding Value (and, optionally, Pixel Padding Range Limit) marks
pixels that are not part of the image; the derived object keeps those attributes, so its
padding must hold exactly those values too, or viewers, 3D renderers and segmentation tools
would take a network's small changes there (-1523, -1460 around -1500) for real data. The
padding is restored in stored values after the network and its guards, the same place for
every model.

Before the network, a CT's padding is filled with the image mirrored across its edge
(:func:`fill_padding`): a network shown the step from air to padding (-1000 to -1500 HU)
treats it as an edge to keep and leaves the noise beside it, as it would at the image border
(the mirrored rim of :mod:`dicomnode.engine.inference` is the same idea).
"""

from __future__ import annotations

from functools import lru_cache

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


def padding_mask(source: Dataset, source_stored: np.ndarray) -> np.ndarray | None:
    """Where ``source_stored`` holds the declared padding; None when none is declared or found."""
    bounds = padding_range(source)
    if bounds is None:
        return None
    mask = (source_stored >= bounds[0]) & (source_stored <= bounds[1])
    return mask if mask.any() else None


def fills_padding(modality: str) -> bool:
    """Whether the node fills a source's declared padding before the network: CT only.

    A CT's padding is the region outside the reconstruction circle, far below air: a step no
    anatomy makes. Other modalities may declare their dark background as padding (an MR with
    Pixel Padding Value 0); mirroring the object into that background would show a network
    something it never saw, for no step to hide, so there it is only restored afterwards.
    """
    return modality.strip().upper() == "CT"


def fill_padding(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values`` (H, W) with its ``mask`` pixels replaced by the image mirrored across them.

    A padding pixel p whose nearest image pixel is q takes the value at 2q - p (the image
    reflected across the padding's edge), or q's own value where that point is padding too or
    outside the slice. So the network sees noisy image continuing where the padding was, with
    no step; the padding is put back exactly afterwards (:func:`keep_padding`). A slice that is
    all padding is returned unchanged.

    Only padding connected to the slice's border is filled: the region outside the
    reconstruction circle always is, while pixels inside the body that merely share the padding
    value (air in lung or bowel clipped to a declared -1024) are anatomy, whose edges the network
    must see as they are.
    """
    out = np.array(values, dtype=np.float64, copy=True)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or mask.all():
        return out
    targets, sources = _mirror_map(mask.shape, np.packbits(mask).tobytes())
    out.flat[targets] = out.flat[sources]
    return out


@lru_cache(maxsize=8)
def _mirror_map(shape: tuple[int, ...], packed: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(padding pixels, the image pixels they copy) as flat indices, for one padding mask.

    The slices of a series share their reconstruction circle, so the distance transform (most
    of the cost: ~35 ms for a 512x512 slice) is computed once per mask, not once per slice.
    """
    from scipy import ndimage

    mask = np.unpackbits(np.frombuffer(packed, dtype=np.uint8),
                         count=int(np.prod(shape))).reshape(shape).astype(bool)
    labels, _count = ndimage.label(mask)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    mask = np.isin(labels, edge[edge > 0])  # padding reaching the border: outside the circle
    if not mask.any():
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    _distance, (near_row, near_col) = ndimage.distance_transform_edt(mask, return_indices=True)
    rows, cols = np.nonzero(mask)
    q_row, q_col = near_row[rows, cols], near_col[rows, cols]
    r_row, r_col = 2 * q_row - rows, 2 * q_col - cols
    inside = (r_row >= 0) & (r_row < shape[0]) & (r_col >= 0) & (r_col < shape[1])
    r_row, r_col = np.where(inside, r_row, q_row), np.where(inside, r_col, q_col)
    padded = mask[r_row, r_col]
    r_row, r_col = np.where(padded, q_row, r_row), np.where(padded, q_col, r_col)
    return (np.ravel_multi_index((rows, cols), shape),
            np.ravel_multi_index((r_row, r_col), shape))


def keep_padding(source: Dataset, source_stored: np.ndarray, output_stored: np.ndarray,
                 scale: int) -> np.ndarray:
    """``output_stored`` with the source's padding pixels put back, exactly as they were.

    For super-resolution each source pixel covers ``scale`` x ``scale`` output pixels; a padding
    pixel's block gets its value (nearest neighbour, so padding stays one value per block).
    """
    mask = padding_mask(source, source_stored)
    if mask is None:
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
