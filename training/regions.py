"""Where a model's error is: tissue, background, and the background along each image edge.

A mean PSNR over the whole image can rise while a model makes one part of the image worse
than its baseline: a super-resolution network trained on crops learns to answer each crop's
FFT wrap-around and puts stripes along the image edges (docs/BENCHMARKS.md, "Quality
benchmarks"). Comparing the RMS error per region against the best baseline catches that, and
:func:`worse_regions` is the check ``dicomnode-train evaluate`` reports and writes to a card.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from training.metrics import foreground

EDGE_PX = 24
"""Width of the edge bands: wide enough to hold wrap-around ringing of a 2x k-space model."""

MARGIN = 0.10
"""A region fails when the model's RMS error there exceeds the baseline's by more than 10 % of
the baseline's error in that region plus 10 % of its error over the whole image. The second term
keeps near-exact regions (a reader's blank border, where any error is ten times the baseline's
0.2) from failing on differences far below what the baseline gets wrong everywhere else."""

EXACT = 1e-6
"""A baseline whose error in a region is below this share of the model's is exact there (to
rounding): the region's excess is then reported without a ratio."""


def padding_pixels(reference: np.ndarray, padding: tuple[float, float]) -> np.ndarray:
    """Where ``reference`` holds the declared padding values (exact in a clean series)."""
    return (reference >= padding[0]) & (reference <= padding[1])


def region_masks(reference: np.ndarray, edge: int = EDGE_PX,
                 padding: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
    """Boolean masks over a (slices, rows, columns) reference series.

    ``padding`` (the source's declared padding values, e.g. -1500 outside a CT's reconstruction
    circle) is left out of every region: the node puts it back exactly, it is not image.
    Tissue is :func:`training.metrics.foreground` of the image pixels (without padding, the same
    pixels as ``psnr_foreground``); the edge bands are background within ``edge`` pixels of
    each side.
    """
    reference = np.asarray(reference)
    image = np.ones(reference.shape, dtype=bool)
    if padding is not None:
        image &= ~padding_pixels(reference, padding)
    tissue = np.zeros_like(image)
    if image.any():
        tissue[image] = foreground(reference[image])
    background = image & ~tissue
    masks = {"image": image, "tissue": tissue, "background": background}
    sides = {"top": (Ellipsis, slice(0, edge), slice(None)),
             "bottom": (Ellipsis, slice(-edge, None), slice(None)),
             "left": (Ellipsis, slice(None), slice(0, edge)),
             "right": (Ellipsis, slice(None), slice(-edge, None))}
    for side, index in sides.items():
        band = np.zeros_like(background)
        band[index] = True
        masks[f"background_{side}"] = background & band
    return masks


def squared_errors(reference: np.ndarray, outputs: Mapping[str, np.ndarray],
                   padding: tuple[float, float] | None = None
                   ) -> dict[str, dict[str, list[float]]]:
    """Per region and method: [sum of squared errors, pixel count] (pooled across series later)."""
    reference = np.asarray(reference, dtype=np.float64)
    masks = region_masks(reference, padding=padding)
    result: dict[str, dict[str, list[float]]] = {}
    for region, mask in masks.items():
        count = float(mask.sum())
        result[region] = {
            name: [float(np.sum((np.asarray(out, dtype=np.float64)[mask]
                                 - reference[mask]) ** 2)), count]
            for name, out in outputs.items()}
    return result


def pooled_rms(per_series: Sequence[Mapping[str, Mapping[str, Sequence[float]]]]
               ) -> dict[str, dict[str, float | None]]:
    """RMS error per region and method over all pixels of all series (None: region empty)."""
    if not per_series:
        return {}
    table: dict[str, dict[str, float | None]] = {}
    for region in per_series[0]:
        table[region] = {}
        for name in per_series[0][region]:
            total = sum(s[region][name][0] for s in per_series)
            count = sum(s[region][name][1] for s in per_series)
            table[region][name] = float(np.sqrt(total / count)) if count else None
    return table


def worse_regions(rms: Mapping[str, Mapping[str, float | None]], baseline: str,
                  model: str = "model", margin: float = MARGIN) -> list[dict[str, object]]:
    """Regions where ``model``'s RMS error is above ``baseline``'s by more than :data:`MARGIN`."""
    whole = rms["image"][baseline] if "image" in rms else None
    worse: list[dict[str, object]] = []
    for region, by_name in rms.items():
        ours, theirs = by_name.get(model), by_name.get(baseline)
        if ours is None or theirs is None:
            continue
        if ours > theirs * (1.0 + margin) + margin * (whole or 0.0):
            worse.append({"region": region, "model_rms": round(ours, 4), "baseline": baseline,
                          "baseline_rms": round(theirs, 4),
                          # a baseline exact to rounding (1e-13 in a blank border) has no ratio
                          "excess": (round(ours / theirs - 1.0, 4) if theirs > EXACT * ours
                                     else None)})
    return worse
