"""A whole series in memory through an enhancer, exactly as ``enhance_series`` runs it.

``dicomnode enhance`` and the worker decode a series a chunk at a time
(``dicomnode.enhance.enhance_series``); training's validation and ``dicomnode-train
evaluate`` hold the degraded series in memory. Both take the series statistics from the same
evenly spaced slices (:func:`sample_indices`) and give a 2.5D network the same neighbours (the
end slice repeated), so a card's numbers are the node's pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dicomnode.engine import Enhancer

SAMPLE_SLICES = 16
"""Slices read for series statistics (percentile normalisation): stable percentiles, cheap."""


def sample_indices(count: int, wanted: int = SAMPLE_SLICES) -> np.ndarray:
    """Up to ``wanted`` evenly spaced indices of ``count`` slices, first and last included."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, count - 1, min(wanted, count)).round().astype(np.int64))


def enhance_volume(enhancer: Enhancer, volume: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """(N, H, W) modality values -> (N, H*f, W*f): statistics from :func:`sample_indices`,
    then chunks of ``batch_size`` slices with ``enhancer.context`` neighbours on each side."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3 or not len(volume):
        raise ValueError(f"volume has shape {volume.shape}: expected (N, H, W) with N >= 1")
    sample = list(volume[sample_indices(len(volume))]) if enhancer.needs_sample else []
    run = enhancer.for_series(sample)
    context = enhancer.context
    count = len(volume)
    outputs = []
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        picks = np.clip(np.arange(start - context, stop + context), 0, count - 1)
        outputs.append(np.asarray(run(volume[picks]), dtype=np.float64))
    return np.concatenate(outputs)
