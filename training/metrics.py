"""SPEC section 8 metrics: PSNR and SSIM on modality values, per series and averaged.

The data range is max - min of the *reference series* (not of each slice, not of the dtype),
so a model cannot look better on a dark slice; SSIM is scikit-image's with a Gaussian window
(sigma 1.5, population covariance, as in Wang et al. 2004), computed slice by slice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from skimage.metrics import structural_similarity


def data_range(reference: np.ndarray) -> float:
    """max - min of the reference series (1 for a constant series, to stay finite)."""
    span = float(np.max(reference) - np.min(reference))
    return span if span > 0 else 1.0


def _prepared(reference: np.ndarray, test: np.ndarray, value_range: float | None
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """Both as float64 of one shape, and the range (the reference series' unless given)."""
    reference = np.asarray(reference, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if reference.shape != test.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, test {test.shape}")
    return reference, test, data_range(reference) if value_range is None else value_range


def psnr(reference: np.ndarray, test: np.ndarray, value_range: float | None = None) -> float:
    """10 log10(range^2 / MSE) over the whole series; inf when identical."""
    reference, test, value_range = _prepared(reference, test, value_range)
    mse = float(np.mean((reference - test) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(value_range**2 / mse))


def ssim(reference: np.ndarray, test: np.ndarray, value_range: float | None = None) -> float:
    """Mean over slices of scikit-image SSIM (Gaussian window sigma 1.5) with the series range."""
    reference, test, value_range = _prepared(reference, test, value_range)
    stack_ref = reference.reshape(-1, *reference.shape[-2:])
    stack_test = test.reshape(-1, *test.shape[-2:])
    scores = [
        structural_similarity(r, t, data_range=value_range, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False)
        for r, t in zip(stack_ref, stack_test, strict=True)
    ]
    return float(np.mean(scores))


def foreground(reference: np.ndarray) -> np.ndarray:
    """Pixels above 10 % of the reference's P1..P99 span: tissue, not air or MR background."""
    low, high = np.percentile(reference, [1, 99])
    return np.asarray(reference) > low + 0.1 * (high - low)


def series_metrics(reference: np.ndarray, outputs: Mapping[str, np.ndarray]
                   ) -> dict[str, dict[str, float]]:
    """PSNR and SSIM of every named output against one reference series.

    Also ``psnr_foreground``: PSNR over :func:`foreground` pixels only, same data range. Not a
    SPEC section 8 metric (those decide "better"); it shows how much of a gain is background
    (e.g. removing the Rician bias of MR air) rather than tissue.
    """
    value_range = data_range(reference)
    mask = foreground(reference)
    return {name: {"psnr": psnr(reference, out, value_range),
                   "ssim": ssim(reference, out, value_range),
                   "psnr_foreground": psnr(np.asarray(reference)[mask], np.asarray(out)[mask],
                                           value_range)}
            for name, out in outputs.items()}


def average(per_series: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean of each metric of each method over series (each series counts once)."""
    names = list(per_series[0]) if per_series else []
    return {name: {metric: float(np.mean([s[name][metric] for s in per_series]))
                   for metric in per_series[0][name]}
            for name in names}


def beats(model: Mapping[str, float], baseline: Mapping[str, float]) -> bool:
    """SPEC section 8: better only when both mean PSNR and mean SSIM are higher."""
    return model["psnr"] > baseline["psnr"] and model["ssim"] > baseline["ssim"]
