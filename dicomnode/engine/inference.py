"""Run a network over a stack of slices: batches, padding, overlapping tiles blended seamlessly.

:func:`infer` is a function of its arguments (the shape of MONAI's ``sliding_window_inference``)
and keeps nothing between calls, so one loaded network can serve any number of series, and an
out-of-memory fall back never leaks into the next call.

Tiling: an image larger than ``tile`` is cut into tiles that overlap by ``overlap`` input pixels,
at offsets that are multiples of the network's ``pad_multiple`` (so a U-shaped network sees the
same down-sampling grid as on the whole image). Each output tile is weighted by a window that is
zero on the outer quarter of the overlap (where the tile lacks context: convolution padding),
ramps linearly across the middle half and is one elsewhere; opposite ramps sum to one, so the
blend is a cross-fade with no seam, and for a network whose receptive field is within a quarter
of the overlap the tiled result equals the untiled one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dicomnode.engine.devices import (
    check_precision,
    is_out_of_memory,
    release_cached_memory,
    resolve_device,
)
from dicomnode.errors import DeviceError
from dicomnode.logs import event

log = logging.getLogger(__name__)

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32
MIN_TILE = 64  # below this, tiles are mostly overlap: out of memory is reported instead
# On a CPU a forward pass is limited by cache, not by how many tiles it holds: the shipped
# NAFNet took 605 ms per 528x528 slice one at a time and 1123 ms in a batch of 6; RLFN x2
# 202 ms per 256x256 slice alone and 422 ms in a batch of 4 (docs/BENCHMARKS.md). So on a CPU
# a pass holds at most this many input pixels (at least one tile); GPUs keep the batch size.
CPU_PASS_PIXELS = 256 * 256


@dataclass(frozen=True)
class _Axis:
    """Tiling of one axis: padded length, tile extent, tile starts, effective overlap."""

    padded: int
    extent: int
    starts: tuple[int, ...]
    overlap: int


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image size go; the same for every slice of that size."""

    rows: _Axis
    columns: _Axis

    def tiles(self) -> Iterator[tuple[int, int, int, int]]:
        """(row index, column index, row start, column start) of every tile."""
        for iy, y0 in enumerate(self.rows.starts):
            for ix, x0 in enumerate(self.columns.starts):
                yield iy, ix, y0, x0

    @property
    def count(self) -> int:
        return len(self.rows.starts) * len(self.columns.starts)


def plan_tiles(height: int, width: int, multiple: int = 1, tile: int | None = DEFAULT_TILE,
               overlap: int = DEFAULT_OVERLAP) -> TilePlan:
    """Tile an image of ``height`` x ``width`` input pixels (see the module docstring).

    The image is padded (bottom and right) to a multiple of ``multiple``; ``tile`` is rounded
    down to a multiple of it (and at least one multiple). ``tile=None`` (or 0) means no tiling.
    """
    if multiple < 1 or height < 1 or width < 1:
        raise ValueError(f"cannot tile {height} x {width} with pad multiple {multiple}")
    if overlap < 0:
        raise ValueError(f"overlap is {overlap}: expected >= 0")
    return TilePlan(_plan_axis(height, multiple, tile, overlap),
                    _plan_axis(width, multiple, tile, overlap))


def _plan_axis(length: int, multiple: int, tile: int | None, overlap: int) -> _Axis:
    padded = math.ceil(length / multiple) * multiple
    limit = max(multiple, (tile // multiple) * multiple) if tile else padded
    if padded <= limit:
        return _Axis(padded, padded, (0,), 0)
    stride = max(multiple, ((limit - overlap) // multiple) * multiple)
    starts = [*range(0, padded - limit, stride), padded - limit]
    return _Axis(padded, limit, tuple(starts), min(overlap, limit - stride))


def blend_window(extent: int, overlap: int, left: bool, right: bool) -> np.ndarray:
    """1-D weights of a tile of ``extent`` output pixels with neighbours on the given sides.

    Zero over the outer quarter of ``overlap``, a linear ramp over the middle half, then one;
    opposite ramps of two neighbours sum to one across their common overlap.
    """
    weights = np.ones(extent, dtype=np.float32)
    if overlap <= 0:
        return weights
    margin = overlap // 4
    ramp = overlap - 2 * margin
    centres = np.arange(extent) + 0.5
    if left:
        weights = np.minimum(weights, np.clip((centres - margin) / ramp, 0.0, 1.0))
    if right:
        weights = np.minimum(weights, np.clip((extent - centres - margin) / ramp, 0.0, 1.0))
    return weights


def infer(
    images: np.ndarray,
    model: nn.Module,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 8,
    border: int = 0,
) -> np.ndarray:
    """Run ``model`` on every slice of ``images`` and return its float32 output.

    ``images``: (N, H, W) for a one-channel network or (N, C, H, W) with C = the network's
    ``in_channels`` (2.5D: neighbouring slices as channels), already normalised. The result has
    the same rank: (N, H*s, W*s) or (N, C_out, H*s, W*s), s = the network's ``scale``.
    ``precision`` is ``fp32``, ``bf16`` or ``fp16`` (autocast; decided by
    :func:`dicomnode.engine.devices.choose_precision`). On device out-of-memory the batch is halved,
    then the tile, down to 1 and :data:`MIN_TILE`; past that a DeviceError says what to change.
    ``border``: mirror that many pixels around each slice first and drop them from the output
    (context at the image edge; :func:`dicomnode.nets.image_border` says how many a network
    wants).
    """
    array = np.asarray(images, dtype=np.float32)
    squeeze = array.ndim == 3
    if squeeze:
        array = array[:, None]
    in_channels = int(getattr(model, "in_channels", array.shape[1]))
    if array.ndim != 4 or array.shape[1] != in_channels or 0 in array.shape:
        raise ValueError(
            f"images have shape {array.shape}: expected (N, H, W) or (N, {in_channels}, H, W) "
            f"for a network with in_channels = {in_channels}"
        )
    if batch_size < 1 or border < 0:
        raise ValueError(f"batch_size is {batch_size}, border {border}: expected >= 1 and >= 0")
    target = resolve_device(device)
    dtype = check_precision(precision, target)
    model.eval()
    model.to(device=target, memory_format=torch.channels_last)

    array, rim = mirror_border(array, border)
    height, width = array.shape[-2:]
    current_tile = tile + 2 * rim if tile else None  # a tile's size counts image pixels
    batch = batch_size
    while True:
        try:
            output = _run(array, model, target, dtype, current_tile, overlap, batch)
            break
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            release_cached_memory(target)
            largest = max(height, width)
            size = min(current_tile or largest, largest)
            if batch > 1:
                batch //= 2
            elif size // 2 >= max(MIN_TILE, 2 * overlap):
                current_tile = size // 2
            else:
                raise DeviceError(
                    f"{target} ran out of memory even with batch size 1 and {size}-pixel tiles; "
                    "free device memory (other processes?), or set [worker] device = \"cpu\""
                ) from exc
            event(log, "inference_out_of_memory", logging.WARNING, device=str(target),
                  batch_size=batch, tile=current_tile)
    if rim:
        cut = rim * int(getattr(model, "scale", 1))
        output = output[..., cut:output.shape[-2] - cut, cut:output.shape[-1] - cut]
    return output[:, 0] if squeeze and output.shape[1] == 1 else output


def mirror_border(array: np.ndarray, border: int) -> tuple[np.ndarray, int]:
    """``array`` (..., H, W) with ``border`` mirrored pixels on every side (fewer for a slice
    too small to mirror that far), and the number used."""
    rim = min(border, array.shape[-2] - 1, array.shape[-1] - 1)
    if rim <= 0:
        return array, 0
    pad = [(0, 0)] * (array.ndim - 2) + [(rim, rim), (rim, rim)]
    return np.pad(array, pad, mode="reflect"), rim


def _run(array: np.ndarray, model: nn.Module, device: torch.device, dtype: torch.dtype | None,
         tile: int | None, overlap: int, batch_size: int) -> np.ndarray:
    """One attempt at the whole stack with the given batch and tile sizes."""
    count, _, height, width = array.shape
    scale = int(getattr(model, "scale", 1))
    multiple = int(getattr(model, "pad_multiple", 1))
    out_channels = int(getattr(model, "out_channels", array.shape[1]))
    plan = plan_tiles(height, width, multiple, tile, overlap)
    rows, cols = plan.rows, plan.columns
    pad = ((0, 0), (0, 0), (0, rows.padded - height), (0, cols.padded - width))
    padded = np.pad(array, pad, mode="reflect") if any(p[1] for p in pad) else array

    row_windows = [blend_window(rows.extent * scale, rows.overlap * scale, y0 > 0,
                                y0 + rows.extent < rows.padded) for y0 in rows.starts]
    col_windows = [blend_window(cols.extent * scale, cols.overlap * scale, x0 > 0,
                                x0 + cols.extent < cols.padded) for x0 in cols.starts]
    total = np.zeros((count, out_channels, rows.padded * scale, cols.padded * scale), np.float32)
    weight_sum = np.zeros(total.shape[-2:], dtype=np.float32)
    for iy, ix, y0, x0 in plan.tiles():
        weight_sum[y0 * scale:(y0 + rows.extent) * scale, x0 * scale:(x0 + cols.extent) * scale] \
            += np.outer(row_windows[iy], col_windows[ix])

    jobs = [(i, *t) for i in range(count) for t in plan.tiles()]
    batch_size = pass_size(batch_size, rows.extent * cols.extent, device)
    for start in range(0, len(jobs), batch_size):
        group = jobs[start:start + batch_size]
        tiles = np.stack([padded[i, :, y0:y0 + rows.extent, x0:x0 + cols.extent]
                          for i, _, _, y0, x0 in group])
        result = _forward(model, tiles, device, dtype)
        expected = (len(group), out_channels, rows.extent * scale, cols.extent * scale)
        if result.shape != expected:
            raise ValueError(f"network returned {result.shape} for input {tiles.shape}; "
                             f"expected {expected} (scale {scale})")
        for k, (i, iy, ix, y0, x0) in enumerate(group):
            weights = np.outer(row_windows[iy], col_windows[ix])
            total[i, :, y0 * scale:(y0 + rows.extent) * scale,
                  x0 * scale:(x0 + cols.extent) * scale] += result[k] * weights
    output = (total / weight_sum).astype(np.float32)
    return output[..., :height * scale, :width * scale]


def pass_size(batch_size: int, tile_pixels: int, device: torch.device) -> int:
    """Tiles per forward pass: the batch size, but on a CPU no more than fit
    :data:`CPU_PASS_PIXELS` (at least one)."""
    if device.type != "cpu":
        return batch_size
    return max(1, min(batch_size, CPU_PASS_PIXELS // max(tile_pixels, 1)))


def _forward(model: nn.Module, tiles: np.ndarray, device: torch.device,
             dtype: torch.dtype | None) -> np.ndarray:
    """One batch through the network, channels_last, under autocast when not fp32."""
    batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(device)
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                enabled=dtype is not None):
        result = model(batch)
    return result.float().cpu().numpy()
