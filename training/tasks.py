"""What a model is trained to undo: a degradation from SPEC section 7, its baselines and levels.

The degradations themselves live in ``dicomnode.engine.degradations`` (the node's guards use the
same code); this module reads a config's ``[degradation]`` table and applies them to series for
evaluation and to random crops for training, and it knows which classical baselines each task
must beat. A config's ``[normalisation]`` is read here into the card's spec
(``dicomnode.engine.normalise``), the one schema the node and training share.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.engine import degradations as deg
from dicomnode.engine.classical import bicubic_upscale, nl_means
from dicomnode.engine.normalise import NormalisationSpec, parse_normalisation
from training.data import SeriesData, random_crop, random_flip_rotate, stable_seed

log = logging.getLogger(__name__)

KINDS = ("rician", "ct_low_dose", "poisson_gaussian", "kspace", "block_mean")
DEFAULT_CT_SPACING_MM = 0.7
"""Used when a CT slice has no PixelSpacing (logged): a typical body field of view / 512."""


class TaskError(ValueError):
    """A ``[degradation]`` or ``[normalisation]`` table is invalid; the message names the key."""


LEGACY_NORMALISATION = {"linear": ("offset", "scale"),
                        "percentile": ("low_percentile", "high_percentile")}
"""Keys of the ``[normalisation]`` tables written before training spoke the card's schema
(configs in ``training/configs`` and the config stored in older checkpoints)."""


def read_normalisation(table: Mapping[str, Any] | None) -> NormalisationSpec:
    """A config's ``[normalisation]`` as the card's spec (``dicomnode.engine.normalise``):
    ``method = "hu"`` with ``low`` / ``high`` (a fixed window), or ``"percentile"`` with the
    ``low`` / ``high`` percentiles of the input series (default 0.5 / 99.5).

    Older tables are read into the same spec: ``method = "linear"`` with ``offset`` / ``scale``
    is the window ``offset``..``offset + scale``; ``low_percentile`` / ``high_percentile`` are
    ``low`` / ``high``. Training maps inputs and targets with the same (unclipped) map, so
    ``clip`` is refused here.
    """
    raw = dict(table or {})
    method = raw.get("method", "percentile")
    old_keys = {key for keys in LEGACY_NORMALISATION.values() for key in keys}
    if method == "linear" or old_keys & set(raw):
        legacy = LEGACY_NORMALISATION.get(method)
        if legacy is None:
            raise TaskError(f"normalisation.method = {method!r} with "
                            f"{', '.join(sorted(old_keys & set(raw)))}: expected 'linear' "
                            "(offset, scale) or 'percentile' (low_percentile, high_percentile)")
        unknown = sorted(set(raw) - {"method", "note", *legacy})
        if unknown:
            raise TaskError(f"normalisation.{unknown[0]}: unknown key (accepted: method, "
                            f"{', '.join(legacy)})")
        if method == "linear":
            offset, scale = float(raw.get("offset", 0.0)), float(raw.get("scale", 1000.0))
            if scale <= 0:
                raise TaskError(f"normalisation.scale = {scale}: expected > 0")
            raw = {"method": "hu", "low": offset, "high": offset + scale}
        else:
            raw = {"method": "percentile", "low": raw.get("low_percentile", 0.5),
                   "high": raw.get("high_percentile", 99.5)}
    unknown = sorted(set(raw) - {"method", "low", "high", "note"})
    if unknown:
        raise TaskError(f"normalisation.{unknown[0]}: unknown key (accepted: method, low, high; "
                        "clip is for the node only)")
    if raw.get("method", "percentile") == "percentile":
        raw = {"low": 0.5, "high": 99.5, **raw, "method": "percentile"}
    if raw["method"] == "none":
        raise TaskError("normalisation.method = 'none': a network needs inputs in a known "
                        "range; use 'hu' (CT) or 'percentile'")
    spec, problems = parse_normalisation(raw)
    if problems:
        raise TaskError("; ".join(problems))
    return spec


def normalisation_card(spec: NormalisationSpec) -> dict[str, Any]:
    """The card's ``[normalisation]`` table for ``spec``, with a note in words."""
    note = ("x = (v - low) / (high - low) on modality values; output mapped back"
            if spec.method == "hu" else
            "x = (v - P_low) / (P_high - P_low), percentiles of the input series (up to 16 "
            "evenly spaced slices); output mapped back")
    table = spec.table()
    table.pop("clip", None)  # training never clips (read_normalisation refuses it)
    return {**table, "note": note}


def _pair(table: Mapping[str, Any], key: str, default: tuple[float, float]) -> tuple[float, float]:
    value = table.get(key, list(default))
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int | float) for v in value) or value[0] > value[1]):
        raise TaskError(f"degradation.{key} = {value!r}: expected [low, high]")
    return float(value[0]), float(value[1])


def _levels(table: Mapping[str, Any], key: str, default: list[float]) -> tuple[float, ...]:
    value = table.get(key, default)
    if not isinstance(value, list) or not value or not all(
        isinstance(v, int | float) and v > 0 for v in value
    ):
        raise TaskError(f"degradation.{key} = {value!r}: expected a list of positive numbers")
    return tuple(float(v) for v in value)


@dataclass
class Task:
    """A degradation with its parameters, the baselines it must beat and its evaluation levels."""

    kind: str
    scale: int = 1
    train_range: tuple[float, float] = (0.0, 0.0)
    train_levels: tuple[float, ...] = ()
    eval_levels: tuple[float, ...] = (1.0,)
    read_noise: float = 0.0
    floor: tuple[float, float] = (0.0, 0.0)
    i0: float = deg.CT_I0
    views: int = deg.CT_VIEWS
    realisations: int = 2
    mix: bool = False
    cache_dir: Path | None = None
    _noise_cache: dict[tuple[str, int, float, int], np.ndarray] = field(
        default_factory=dict, repr=False)
    _sinograms: dict[tuple[bytes, float], np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def task(self) -> str:
        return "super-resolution" if self.kind in ("kspace", "block_mean") else "denoise"

    @property
    def level_name(self) -> str:
        return {"rician": "sigma_fraction", "ct_low_dose": "dose_fraction",
                "poisson_gaussian": "photons"}.get(self.kind, "scale")

    @classmethod
    def from_config(cls, table: Mapping[str, Any], cache_dir: Path | None = None) -> Task:
        kind = table.get("kind")
        if kind not in KINDS:
            raise TaskError(f"degradation.kind = {kind!r}: expected one of {', '.join(KINDS)}")
        if kind == "rician":
            rng = _pair(table, "fraction", (0.01, 0.09))
            return cls(kind, train_range=rng, eval_levels=_levels(table, "eval", [0.03, 0.07]),
                       train_levels=tuple(np.linspace(rng[0], rng[1], 9)),
                       floor=_pair(table, "floor", (0.0, 0.0)))
        if kind == "ct_low_dose":
            doses = _levels(table, "train_doses", [0.05, 0.1, 0.15, 0.25, 0.35, 0.5])
            if any(d > 1 for d in doses):
                raise TaskError("degradation.train_doses: dose fractions must be <= 1")
            realisations = table.get("realisations", 2)
            if not isinstance(realisations, int) or isinstance(realisations, bool) or not (
                2 <= realisations <= 64
            ):
                raise TaskError(f"degradation.realisations = {realisations!r}: expected an "
                                "integer from 2 to 64")
            mix = table.get("mix", False)
            if not isinstance(mix, bool):
                raise TaskError(f"degradation.mix = {mix!r}: expected true or false")
            return cls(kind, train_levels=doses, eval_levels=_levels(table, "eval", [0.1, 0.25]),
                       i0=float(table.get("i0", deg.CT_I0)),
                       views=int(table.get("views", deg.CT_VIEWS)), realisations=realisations,
                       mix=mix, cache_dir=cache_dir)
        if kind == "poisson_gaussian":
            rng = _pair(table, "photons", (100.0, 3000.0))
            return cls(kind, train_range=rng, eval_levels=_levels(table, "eval", [300, 1000]),
                       read_noise=float(table.get("read_noise", 0.002)),
                       train_levels=tuple(np.geomspace(rng[0], rng[1], 9)))
        scale = table.get("scale")
        if not isinstance(scale, int) or isinstance(scale, bool) or scale not in (2, 3, 4, 8):
            raise TaskError(f"degradation.scale = {scale!r}: expected 2, 3, 4 or 8")
        return cls(kind, scale=scale, eval_levels=(float(scale),))

    @classmethod
    def from_card(cls, table: Mapping[str, Any]) -> Task:
        """The task a card's ``[degradation]`` table (written by :meth:`card`) describes."""
        config = dict(table)
        config["eval"] = list(config.get("evaluated_at", []))
        return cls.from_config(config)

    def card(self) -> dict[str, Any]:
        """The card's ``[degradation]`` table."""
        out: dict[str, Any] = {"kind": self.kind, "evaluated_at": list(self.eval_levels),
                               "level": self.level_name}
        if self.kind == "rician":
            note = ("Rician noise, sigma = fraction x the series' 99th percentile, added on top "
                    "of the images' own noise")
            if self.floor[1] > 0:
                note += ("; in training the reference first gets its own Rician floor "
                         "(sigma = floor x P99), which the model keeps")
            out.update(fraction=list(self.train_range), floor=list(self.floor), note=note)
        elif self.kind == "ct_low_dose":
            note = ("projection-domain low-dose insertion, parallel beam over 180 degrees, "
                    "Poisson counts, FBP of noisy minus clean")
            if self.mix:
                note += ("; in training, doses log-uniform over the train_doses range from "
                         f"{self.realisations} simulated realisations per slice at "
                         f"{self.mix_reference_dose:.3g} dose, mixed in random pairs "
                         "(cos t, sin t) and scaled by sqrt(reference / dose)")
            out.update(train_doses=list(self.train_levels), i0=self.i0, views=self.views,
                       realisations=self.realisations, mix=self.mix,
                       mu_water_per_mm=deg.MU_WATER_PER_MM, note=note)
        elif self.kind == "poisson_gaussian":
            out.update(photons=list(self.train_range), read_noise=self.read_noise, note=(
                "Poisson at the photon level (signal mapped to [0, 1] by the series range) plus "
                "Gaussian read noise"))
        elif self.kind == "kspace":
            out.update(scale=self.scale, note="central 1/f of k-space in each direction")
        else:
            out.update(scale=self.scale, note="f x f block mean (detector binning)")
        return out

    # --- levels -------------------------------------------------------------------------
    def sample_level(self, rng: np.random.Generator) -> float:
        """A training level: continuous noise level, or one of the cached CT doses."""
        if self.kind == "rician":
            return float(rng.uniform(*self.train_range))
        if self.kind == "poisson_gaussian":
            low, high = np.log(self.train_range)
            return float(np.exp(rng.uniform(low, high)))
        if self.kind == "ct_low_dose":
            if self.mix:
                low, high = np.log([min(self.train_levels), max(self.train_levels)])
                return float(np.exp(rng.uniform(low, high)))
            return float(self.train_levels[int(rng.integers(len(self.train_levels)))])
        return float(self.scale)

    @property
    def mix_reference_dose(self) -> float:
        """The dose mixed CT realisations are simulated at: the geometric middle of the range."""
        return float(np.sqrt(min(self.train_levels) * max(self.train_levels)))

    def stats_level(self, level: float) -> float:
        """The grid level whose input statistics stand for ``level`` (bounded cache)."""
        if not self.train_levels:
            return level
        grid = np.asarray(self.train_levels)
        return float(grid[np.argmin(np.abs(np.log(grid) - np.log(level)))])

    # --- whole series (evaluation, input statistics) ------------------------------------
    def reference(self, series: SeriesData) -> np.ndarray:
        """The target the output is compared with (cropped to a multiple of the scale)."""
        return np.asarray(deg.crop_to_multiple(series.slices, self.scale), dtype=np.float64)

    def degrade_series(
        self, series: SeriesData, level: float, rng: np.random.Generator
    ) -> np.ndarray:
        """The whole series degraded at ``level``: what the model and the baselines get."""
        ref = self.reference(series)
        if self.kind == "rician":
            return deg.rand_rician(ref, series.percentile(99) * level, rng)
        if self.kind == "poisson_gaussian":
            return self._poisson_gaussian(series, ref, level, rng)
        if self.kind == "kspace":
            return deg.kspace_truncate(ref, self.scale)
        if self.kind == "block_mean":
            return deg.block_mean(ref, self.scale)
        spacing = self._spacing(series)
        return np.stack([self._ct_slice(s, spacing, level, rng) for s in ref])

    def baselines(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Every SPEC section 7 baseline of this task, slice by slice on modality values."""
        f = self.scale
        if self.kind == "kspace":
            return {"zero_filled": deg.zero_filled(inputs, f),
                    "bicubic": np.stack([bicubic_upscale(s, f) for s in inputs])}
        if self.kind == "block_mean":
            return {"bicubic": np.stack([bicubic_upscale(s, f) for s in inputs])}
        return {"nl_means": np.stack([nl_means(s) for s in inputs])}

    # --- training pairs -----------------------------------------------------------------
    def train_pair(
        self,
        series: SeriesData,
        index: int,
        level: float,
        rng: np.random.Generator,
        patch: int,
        channels: int = 1,
        context: int = 0,
        whole: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input, target) crops in modality values: input (C, p/f, p/f), target (1, p, p).

        Pointwise noise is drawn on the crop itself; k-space truncation on a crop with a
        margin (so its periodic edges fall outside); CT noise comes from cached whole-slice
        realisations because the projection domain sees the whole slice.

        ``context`` (k-space only): the input keeps ``context`` more real pixels on each side,
        input (C, p/f + 2c, p/f + 2c), and the target (1, p + 2cf, p + 2cf); the trainer leaves
        that rim out of the loss, so the network never learns to answer a patch's edges (a
        network with a zero-filled base sees the patch's periodic FFT edges there).

        ``whole`` (k-space only): the whole slice, flipped or turned, and its truncation, exactly
        what the node gives the network. A crop's edges cut through the image, and a network
        with an FFT inside then learns to answer the crop's wrap-around; on a whole slice the
        edges are the image's own, whose wrap-around the scanner's data really has.
        """
        f = self.scale
        stack = series.neighbours(index, channels)
        centre = channels // 2
        if self.kind == "ct_low_dose":
            noise = np.stack([
                self._ct_train_noise(series, i, level, rng)
                for i in _neighbour_indices(len(series.slices), index, channels)])
            if self.mix:
                stack = _random_padding(stack, rng)
            both = np.concatenate([stack + noise, stack[centre : centre + 1]])
            crop, _ = random_crop(both, patch, rng)
            crop = random_flip_rotate([crop], rng)[0]
            return crop[:channels], crop[channels:]
        if context and self.kind != "kspace":
            raise TaskError("data.context applies to k-space super-resolution only")
        if whole:
            if self.kind != "kspace":
                raise TaskError("data.whole_slices applies to k-space super-resolution only")
            image = random_flip_rotate([deg.crop_to_multiple(stack, f)], rng)[0]
            image = image.astype(np.float64)
            return deg.kspace_truncate(image, f), image[centre : centre + 1]
        margin = 8 * f + context * f if self.kind == "kspace" else 0
        crop, _ = random_crop(stack, patch + 2 * margin, rng, multiple=f)
        crop = random_flip_rotate([crop], rng)[0].astype(np.float64)
        rim = context * f  # the target keeps the context too; the trainer crops it off
        target = crop[centre : centre + 1, margin - rim : margin + patch + rim,
                      margin - rim : margin + patch + rim]
        if self.kind == "rician":
            p99 = series.percentile(99)
            if self.floor[1] > 0:  # an already-noisy reference: the scanner's own floor
                crop = deg.rand_rician(crop, p99 * float(rng.uniform(*self.floor)), rng)
                target = crop[centre : centre + 1, margin : margin + patch,
                              margin : margin + patch]
            noisy = deg.rand_rician(crop, p99 * level, rng)
        elif self.kind == "poisson_gaussian":
            noisy = self._poisson_gaussian(series, crop, level, rng)
        elif self.kind == "kspace":
            low = deg.kspace_truncate(crop, f)
            m = margin // f - context
            noisy = low[:, m : m + patch // f + 2 * context, m : m + patch // f + 2 * context]
        else:
            noisy = deg.block_mean(crop, f)
        return noisy, target

    # --- helpers ------------------------------------------------------------------------
    def _poisson_gaussian(
        self, series: SeriesData, image: np.ndarray, photons: float, rng: np.random.Generator
    ) -> np.ndarray:
        return deg.rand_poisson_gaussian(
            image, photons, self.read_noise, rng,
            value_range=(series.percentile(0), series.percentile(100)),
            signal_increases_with_value=series.photometric == "MONOCHROME1",
        )

    def _spacing(self, series: SeriesData) -> float:
        if series.pixel_spacing:
            return series.pixel_spacing
        log.warning("series=%s has no pixel spacing; CT noise assumes %.2f mm",
                    series.series_uid, DEFAULT_CT_SPACING_MM)
        return DEFAULT_CT_SPACING_MM

    def _ct_slice(
        self,
        image: np.ndarray,
        spacing: float,
        dose: float,
        rng: np.random.Generator,
        sinogram: np.ndarray | None = None,
    ) -> np.ndarray:
        """Low-dose version of one slice; non-square slices are padded with air and cropped."""
        h, w = image.shape
        size = max(h, w)
        square = np.full((size, size), -1000.0)
        square[:h, :w] = image
        if sinogram is None:  # the forward projection is the slow half: once per slice
            key = (hashlib.sha1(square.tobytes()).digest(), spacing)
            if key not in self._sinograms:
                if len(self._sinograms) >= 64:  # ~4 MB each: keep the most recent
                    self._sinograms.pop(next(iter(self._sinograms)))
                self._sinograms[key] = deg.ct_sinogram(square, spacing, self.views)
            sinogram = self._sinograms[key]
        noisy = deg.rand_ct_low_dose(square, spacing, dose, rng, i0=self.i0, views=self.views,
                                     sinogram=sinogram)
        return noisy[:h, :w]

    def _ct_train_noise(
        self, series: SeriesData, index: int, dose: float, rng: np.random.Generator
    ) -> np.ndarray:
        """Added CT noise (HU) of one slice for one training pair.

        Without ``mix``: one of ``realisations`` cached simulations at exactly ``dose``. With
        ``mix``: two different cached realisations at the reference dose combined as
        cos(t) a + sin(t) b, t uniform, which has exactly their covariance (they are independent
        and identically distributed), scaled by sqrt(reference / dose): the variance of a log
        count is 1 / expected count, proportional to 1 / dose while counts are not starved.
        So every pair gets fresh noise with the simulation's texture from a few simulations.
        """
        if not self.mix:
            return self.ct_noise(series, index, dose, int(rng.integers(self.realisations)))
        reference = self.mix_reference_dose
        first, second = rng.choice(self.realisations, size=2, replace=False)
        angle = rng.uniform(0.0, 2.0 * np.pi)
        mixed = (np.cos(angle) * self.ct_noise(series, index, reference, int(first))
                 + np.sin(angle) * self.ct_noise(series, index, reference, int(second)))
        return (np.sqrt(reference / dose) * mixed).astype(np.float32)

    def ct_noise_keys(self) -> list[tuple[float, int]]:
        """The (dose, realisation) pairs training draws per slice: what a cache must hold."""
        doses = [self.mix_reference_dose] if self.mix else list(self.train_levels)
        return [(d, r) for d in doses for r in range(self.realisations)]

    def _ct_noise_path(self, series_key: str, index: int, dose: float, realisation: int
                       ) -> tuple[int, Path | None]:
        seed = stable_seed("ct-noise", series_key, index, dose, realisation, self.i0, self.views)
        path = None if self.cache_dir is None else self.cache_dir / f"ct_noise_{seed:08x}.npy"
        return seed, path

    def ct_noise_cached(self, series: SeriesData, index: int, dose: float, realisation: int
                        ) -> bool:
        """Whether this realisation is on disk already (``training.prefill``)."""
        path = self._ct_noise_path(series.key, index, dose, realisation)[1]
        return path is not None and path.is_file()

    def ct_noise(self, series: SeriesData, index: int, dose: float, realisation: int
                 ) -> np.ndarray:
        """Added noise (HU) of one slice at one dose, computed once (memory and disk cache)."""
        key = (series.key, index, dose, realisation)
        if key not in self._noise_cache:
            self._noise_cache[key] = self.ct_slice_noise(
                series.key, index, series.slices[index], self._spacing(series), dose,
                realisation)
        return self._noise_cache[key]

    def ct_slice_noise(self, series_key: str, index: int, image: np.ndarray, spacing: float,
                       dose: float, realisation: int) -> np.ndarray:
        """:meth:`ct_noise` of slice ``index`` of series ``series_key`` given its pixels, read
        from or written to the disk cache: what a prefill process computes from one slice."""
        seed, path = self._ct_noise_path(series_key, index, dose, realisation)
        if path is not None and path.is_file():
            return np.load(path, allow_pickle=False)
        image = np.asarray(image, dtype=np.float64)
        noisy = self._ct_slice(image, spacing, dose, np.random.default_rng(seed))
        noise = (noisy - image).astype(np.float32)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # per-process temporary name: prefill processes may race for one file
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npy")
            np.save(tmp, noise, allow_pickle=False)
            tmp.replace(path)  # atomic: an interrupted run leaves no half-written cache
        return noise

    def slice_spacing(self, series: SeriesData) -> float:
        """The pixel spacing the CT simulation uses for ``series``."""
        return self._spacing(series)


PADDING_RANGE_HU = (-3100.0, -1010.0)
"""Where scanners put the pixels outside the reconstruction circle (-3024, -2048, -2000, -1500,
-1024 are all met); :func:`_random_padding` draws a new value from this range."""


def _random_padding(stack: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The slices with their padding (outside the reconstruction circle) set to a random value.

    Scanners fill that region with a constant of their choosing, and the node must return it
    flat whatever the constant; six training slices show four constants, so without this a
    network learns those and leaves noise on the validation series' -1500. Padding is the
    slice's minimum when it is below air and fills more than 1 % of the slice; every value
    below -1000 HU is zero attenuation, so the cached projection-domain noise stays valid.
    """
    out = stack.astype(np.float64, copy=True)
    value = float(rng.uniform(*PADDING_RANGE_HU))
    for image in out:
        image[ct_padding_mask(image)] = value
    return out


def ct_padding_mask(image: np.ndarray) -> np.ndarray:
    """Where a CT slice (HU) is padding: its minimum, when below air and over 1 % of it.

    Scanners rarely declare the padding (four of the six training slices do not), but it is
    always one flat value below air filling the corners outside the reconstruction circle.
    """
    low = image.min()
    mask = image == low
    if low < -1000.0 and mask.mean() > 0.01:
        return mask
    return np.zeros(image.shape, dtype=bool)


def padding_edge_weights(target: np.ndarray, width: int, extra: float) -> np.ndarray:
    """Per-pixel loss weights: 1, plus ``extra`` on image pixels within ``width`` px of padding.

    The ring next to the padding is a few pixels of a 512-pixel slice, so an unweighted loss
    barely sees it, yet a network that blurs the step into the padding leaves more error there
    than the noisy input had (the reviewed ``ct-denoise`` 1.2.0 failure). ``target`` is (1, H, W)
    in HU, its padding flat as :func:`_random_padding` leaves it.
    """
    from scipy import ndimage

    weights = np.ones(target.shape, dtype=np.float32)
    for plane, out in zip(target, weights, strict=True):
        pad = ct_padding_mask(plane)
        if pad.any():
            near = ndimage.distance_transform_edt(~pad) <= width
            out[near & ~pad] += extra
    return weights


def _neighbour_indices(n: int, index: int, count: int) -> list[int]:
    return [min(max(index + k, 0), n - 1) for k in range(-(count // 2), count // 2 + 1)]
