"""Input normalisation as the model card says: modality values <-> the network's range.

A network only works on intensities scaled the way its training data were, so the card states it
(SPEC section 6), and this is the one schema: training reads its config's ``[normalisation]``
into a :class:`NormalisationSpec` (``training.tasks.read_normalisation``), trains with the map it
makes and exports :meth:`NormalisationSpec.table` to the card.

- ``method = "hu"``: CT in a fixed Hounsfield window, ``low``..``high`` -> 0..1 (the scale is the
  same for every series, so HU keep their meaning);
- ``method = "percentile"``: MR and radiographs, whose values have no absolute scale: the
  ``low`` and ``high`` percentiles of the *series* -> 0..1. Per series, not per slice, so that
  slices of one series keep their relative brightness; computed on up to 16 evenly spaced slices
  (``engine.volume.sample_indices``, the same in the node and in training) before the series is
  processed in chunks;
- ``method = "none"``: modality values as they are (classical algorithms).

Outputs are mapped back with the inverse; clipping to the stored range happens when pixels are
written (``pixels.stored_values``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("none", "hu", "percentile")
# Percentiles of more values than this are computed on an even subsample: the estimate of a
# 0.5 % percentile is already stable to a fraction of a grey level with a few million values.
MAX_STATISTIC_VALUES = 4_000_000


@dataclass(frozen=True)
class Normaliser:
    """The affine map ``low``..``high`` -> 0..1 of one series, and back."""

    low: float = 0.0
    high: float = 1.0
    clip: bool = False

    def forward(self, values: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(values, dtype=np.float32) - np.float32(self.low)) / np.float32(
            self.high - self.low)
        return np.clip(scaled, 0.0, 1.0) if self.clip else scaled

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        return np.asarray(scaled, dtype=np.float64) * (self.high - self.low) + self.low


@dataclass(frozen=True)
class NormalisationSpec:
    """What a card's ``[normalisation]`` table asks for; :meth:`for_series` makes the map."""

    method: str = "none"
    low: float = 0.0
    high: float = 1.0
    clip: bool = False

    @property
    def needs_series(self) -> bool:
        """True when the map depends on the series' values (a first pass is needed)."""
        return self.method == "percentile"

    def table(self) -> dict[str, Any]:
        """The card's ``[normalisation]`` table for this spec (what training exports)."""
        if self.method == "none":
            return {"method": "none"}
        return {"method": self.method, "low": self.low, "high": self.high, "clip": self.clip}

    def for_series(self, samples: Sequence[np.ndarray]) -> Normaliser:
        """The map for a series, from ``samples`` (slices of it in modality values)."""
        if self.method == "none":
            return Normaliser(0.0, 1.0, False)
        if self.method == "hu":
            return Normaliser(self.low, self.high, self.clip)
        low, high = robust_range(samples, self.low, self.high)
        return Normaliser(low, high, self.clip)


def robust_range(samples: Sequence[np.ndarray], low_percentile: float,
                 high_percentile: float) -> tuple[float, float]:
    """The two percentiles of all values in ``samples`` (a constant series maps to low..low+1)."""
    flat = [np.asarray(s, dtype=np.float32).ravel() for s in samples]
    values = np.concatenate(flat) if flat else np.zeros(1, dtype=np.float32)
    if values.size == 0:
        values = np.zeros(1, dtype=np.float32)
    if values.size > MAX_STATISTIC_VALUES:
        values = values[:: values.size // MAX_STATISTIC_VALUES + 1]
    low, high = (float(v) for v in np.percentile(values, [low_percentile, high_percentile]))
    if not high > low:
        high = low + 1.0
    return low, high


def parse_normalisation(raw: Mapping[str, Any]) -> tuple[NormalisationSpec, list[str]]:
    """A card's ``[normalisation]`` table, checked; problems are returned with their key path."""
    problems: list[str] = []
    method = raw.get("method", "none")
    if method not in METHODS:
        problems.append(f"normalisation.method: expected one of {', '.join(METHODS)}, "
                        f"got {method!r}")
        return NormalisationSpec(), problems
    clip = raw.get("clip", False)
    if not isinstance(clip, bool):
        problems.append(f"normalisation.clip: expected true or false, got {clip!r}")
        clip = False
    if method == "none":
        return NormalisationSpec(), problems
    bounds = {}
    for key in ("low", "high"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            example = "-1024 / 3071 (HU)" if method == "hu" else "0.5 / 99.5 (percent)"
            problems.append(f"normalisation.{key}: required for method {method!r}, a number "
                            f"such as {example}; got {value!r}")
            value = 0.0
        bounds[key] = float(value)
    low, high = bounds["low"], bounds["high"]
    if not problems and not low < high:
        problems.append(f"normalisation: low ({low:g}) must be below high ({high:g})")
    if method == "percentile" and not problems and not (low >= 0.0 and high <= 100.0):
        problems.append(f"normalisation: percentiles must lie in 0..100, got {low:g} and "
                        f"{high:g}")
    return NormalisationSpec(method, low, high, clip), problems
