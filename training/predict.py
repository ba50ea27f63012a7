"""Apply a network to a series for validation and evaluation, in modality values.

Kept small and stateless on purpose: normalise with the input series' parameters, run slices in
batches (neighbours stacked as channels for 2.5D), large images in overlapping tiles whose
margins are discarded, map back. The node's own inference path lives in ``dicomnode`` and is
not used here (it blends tiles for any device and precision); the mirrored rim around each slice
is the node's own (``dicomnode.engine.inference.mirror_border``), so both give a network the
same edges.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from dicomnode.engine.inference import mirror_border
from dicomnode.nets import image_border
from training.tasks import Normalisation


def autocast(device: torch.device, amp: str) -> torch.autocast | nullcontext[None]:
    """bf16/fp16 autocast on ``device``, or nothing for ``amp = "none"``."""
    if amp == "none":
        return nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _pad_to(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = nn.functional.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


@torch.no_grad()
def _run(model: nn.Module, x: torch.Tensor, scale: int, multiple: int, tile: int,
         overlap: int, device: torch.device, amp: str) -> torch.Tensor:
    """Model output for a batch (N, C, h, w) -> (N, 1, h*scale, w*scale), tiled if large."""
    n, _c, h, w = x.shape
    if max(h, w) <= tile:
        padded, h0, w0 = _pad_to(x, multiple)
        with autocast(device, amp):
            out = model(padded.to(device).contiguous(memory_format=torch.channels_last))
        return out.float().cpu()[..., : h0 * scale, : w0 * scale]
    out = torch.zeros(n, 1, h * scale, w * scale)
    step = tile - 2 * overlap
    for top in range(0, h, step):
        for left in range(0, w, step):
            t0, l0 = max(top - overlap, 0), max(left - overlap, 0)
            t1, l1 = min(top + step + overlap, h), min(left + step + overlap, w)
            piece = _run(model, x[..., t0:t1, l0:l1], scale, multiple, tile, overlap, device,
                         amp)
            bt, bl = top - t0, left - l0
            th, tw = min(step, h - top), min(step, w - left)
            out[..., top * scale : (top + th) * scale, left * scale : (left + tw) * scale] = (
                piece[..., bt * scale : (bt + th) * scale, bl * scale : (bl + tw) * scale])
    return out


def predict_series(
    model: nn.Module,
    inputs: np.ndarray,
    norm: Normalisation,
    *,
    scale: int = 1,
    channels: int = 1,
    batch_size: int = 4,
    tile: int = 512,
    overlap: int = 32,
    device: torch.device | str = "cpu",
    amp: str = "none",
) -> np.ndarray:
    """Enhance an input series (N, h, w) in modality values; returns (N, h*scale, w*scale).

    Each slice gets the mirrored rim the node gives it (``dicomnode.nets.image_border``).
    """
    device = torch.device(device)
    inputs = np.asarray(inputs, dtype=np.float64)
    offset, span = norm.params(inputs)
    height, width = inputs.shape[-2:]
    mirrored, rim = mirror_border(inputs, image_border(model))
    x_all = torch.from_numpy(((mirrored - offset) / span).astype(np.float32))
    multiple = int(getattr(model, "pad_multiple", 1) or 1)
    tile = max(tile, multiple * math.ceil(2 * overlap / multiple + 1)) + 2 * rim
    was_training = model.training
    model.eval()
    outputs = []
    n = len(x_all)
    try:
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            picks = [[min(max(i + k, 0), n - 1) for k in range(-(channels // 2),
                                                                 channels // 2 + 1)]
                     for i in idx]
            batch = torch.stack([x_all[p] for p in picks])
            outputs.append(_run(model, batch, scale, multiple, tile, overlap, device, amp))
    finally:
        model.train(was_training)
    result = torch.cat(outputs)[:, 0].double().numpy()
    if rim:
        cut = rim * scale
        result = result[:, cut:cut + height * scale, cut:cut + width * scale]
    return result * span + offset
