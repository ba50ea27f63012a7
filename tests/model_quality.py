"""A zoo's learned models re-evaluated on a few slices of ``tests/data``, through the node.

A card's ``[metrics]`` are what the model scored when it was exported; nothing ties them to the
weights that ship beside it. This runs the weights instead: a few real slices are degraded as
SPEC section 7 says (``dicomnode.engine.degradations``), written as DICOM files and enhanced
exactly as ``dicomnode enhance`` and the worker do (``engine.load`` -> ``enhance.enhance_series`` ->
derived files read back); the section 7 baselines (``dicomnode.engine.classical``,
zero-filling) get
the same input values. Scores follow SPEC section 8 (PSNR with the reference's range, SSIM with
a Gaussian window), computed here independently of ``training``; a CT's declared padding (the
node restores it exactly) is left out of the PSNR.

Used by ``tests/test_shipped_models.py`` and ``bench/model_margins.py``.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from safetensors.torch import save_file
from skimage.metrics import structural_similarity

from dicomnode.engine import degradations as deg
from dicomnode.engine import load as load_model
from dicomnode.engine.cards import ModelCard, load_card
from dicomnode.engine.classical import bicubic_upscale, nl_means
from dicomnode.enhance import derivation_for, enhance_series
from dicomnode.files import write_dataset
from dicomnode.nets import build_network
from dicomnode.padding import fill_padding, fills_padding, padding_mask
from dicomnode.pixels import modality_values, pixel_format, stored_values
from dicomnode.series import scan
from tests.conftest import CR_J2K, CT_TILT_DIR, MR_DIR

# Which slices of tests/data each modality is scored on: a few, with anatomy in them. The MR is
# the validation series of the MR models, the CT part of ct-denoise's validation series, the
# radiograph xr-denoise's validation image (a central 512 x 512 crop: the whole one is 1760^2).
SLICES = {
    "MR": (sorted(MR_DIR.glob("*.dcm")), (8, 11, 14, 17, 20, 23, 26, 29), None),
    "CT": (sorted(CT_TILT_DIR.glob("*.dcm")), (2,), None),  # the CT simulation costs ~30 s
    "CR": ([CR_J2K], (0,), 512),
}
SLICES["DX"] = SLICES["DR"] = SLICES["CR"]
# SPEC section 7's evaluation levels, where a card does not list its own (evaluated_at).
DEFAULT_LEVELS = {"rician": (0.03, 0.07), "ct_low_dose": (0.1, 0.25),
                  "poisson_gaussian": (300.0, 1000.0)}
BASELINES = {"kspace": ("zero_filled", "bicubic"), "block_mean": ("bicubic",)}
# PSNR (dB) by which each model must beat the best baseline on these slices, at every level.
# Measured (bench/model_margins.py, docs/RELIABILITY.md): the shipped models gain +0.46
# (mr-sr-x2), +0.67 (mr-denoise at 7 %), +0.72 (xr-denoise at 1000 photons) and +1.91 dB
# (ct-denoise at 25 % dose); their weights replaced by the network's own random initialisation
# score +0.04, -3.2, -13.6 and -17.8 dB, standard normal tensors -19 to -48 dB. An untrained
# mr-sr-x2 is zero-filling (its network adds a residual to it), hence its small margin. The
# margins stay well below the shipped gains: retrained models (mr-denoise trained to keep real
# noise floors, for which this masked-background series is a no-harm check; ct-denoise as an
# FFDNet) must pass, broken weights must not.
MARGIN_DB = {"mr-sr-x2": 0.2, "mr-denoise": 0.1, "xr-denoise": 0.2, "ct-denoise": 0.5}
DEFAULT_MARGIN_DB = 0.2  # a model not listed: a candidate zoo's new name


@dataclass(frozen=True)
class Score:
    psnr: float
    ssim: float


@dataclass
class Evaluation:
    """Scores of the model and every baseline at one degradation level."""

    model: str
    kind: str
    level: float
    scores: dict[str, Score]

    @property
    def best_baseline(self) -> str:
        return max((k for k in self.scores if k != "model"), key=lambda k: self.scores[k].psnr)

    @property
    def gain_db(self) -> float:
        return self.scores["model"].psnr - self.scores[self.best_baseline].psnr

    @property
    def ssim_gain(self) -> float:
        return self.scores["model"].ssim - self.scores[self.best_baseline].ssim

    def line(self) -> str:
        parts = ", ".join(f"{k} {v.psnr:.2f} dB / {v.ssim:.4f}" for k, v in self.scores.items())
        return (f"{self.model} {self.kind} {self.level:g}: {parts}; gain over "
                f"{self.best_baseline} {self.gain_db:+.2f} dB, SSIM {self.ssim_gain:+.4f}")


@dataclass
class _Source:
    """The chosen slices of one series, as the reference the outputs are scored against."""

    datasets: list[Dataset]
    reference: np.ndarray  # (N, H, W) modality values, cropped to a multiple of the scale
    padding: np.ndarray  # (N, H, W) True where the source declares padding
    series_p99: float
    series_range: tuple[float, float]
    modality: str = ""  # what the card asked for (a DX model gets the CR image as DX)
    sinograms: list[np.ndarray] | None = None  # CT: noise-free projections, shared by levels


def learned_names(zoo: Path) -> list[str]:
    """Names of the learned models (card with weights.sha256) in ``zoo``."""
    from dicomnode.engine.cards import list_cards

    cards, _problems = list_cards(zoo)
    return [card.name for card in cards if card.learned]


def evaluate(name: str, zoo: Path, workdir: Path, levels: tuple[float, ...] | None = None,
             seed: int = 20) -> list[Evaluation]:
    """The model ``name`` of ``zoo`` and its baselines at each evaluation level of its card."""
    card = load_card(name, zoo)
    kind = str(card.degradation.get("kind", card.degradation.get("name", "")))
    if kind not in (*DEFAULT_LEVELS, *BASELINES):
        raise ValueError(f"model {name}: degradation {kind!r} has no evaluation here; add it "
                         "to tests/model_quality.py")
    modality = next((m for m in card.modalities if m in SLICES), None)
    if modality is None:
        raise ValueError(f"model {name}: no test slices for modalities {card.modalities}")
    source = _load_source(modality, card.scale)
    source.modality = modality
    if levels is None:
        listed = card.degradation.get("evaluated_at")
        levels = tuple(float(v) for v in listed) if listed and kind in DEFAULT_LEVELS else (
            DEFAULT_LEVELS.get(kind, (float(card.scale),)))
    precision = "fp32" if "fp32" in card.precisions else "auto"
    enhancer = load_model(name, zoo, device="cpu", precision=precision)
    results = []
    for index, level in enumerate(levels):
        rng = np.random.default_rng([seed, index])
        degraded = _degrade(card, kind, level, source, rng)
        folder = workdir / f"{name}-{level:g}"
        inputs = _write_inputs(folder / "in", source, degraded, card.scale)
        output = _run_node(enhancer, folder, source)
        outputs = {"model": output, **_baselines(kind, card.scale, inputs, source)}
        results.append(Evaluation(name, kind, level, {
            method: _score(source, values) for method, values in outputs.items()}))
    return results


def _load_source(modality: str, scale: int) -> _Source:
    files, picks, crop = SLICES[modality]
    series = [pydicom.dcmread(path) for path in files]
    values = [modality_values(ds).astype(np.float64) for ds in series]
    datasets, reference, padding = [], [], []
    for pick in picks:
        ds, image = series[pick], values[pick]
        stored = stored_values(image, pixel_format(ds))
        mask = padding_mask(ds, stored)
        mask = np.zeros(image.shape, dtype=bool) if mask is None else mask
        if crop is not None:
            top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
            image = image[top:top + crop, left:left + crop]
            mask = mask[top:top + crop, left:left + crop]
        datasets.append(ds)
        reference.append(deg.crop_to_multiple(image, scale))
        padding.append(deg.crop_to_multiple(mask, scale))
    every = np.concatenate([v.ravel() for v in values])
    return _Source(datasets, np.stack(reference), np.stack(padding),
                   float(np.percentile(every, 99)), (float(every.min()), float(every.max())))


def _degrade(card: ModelCard, kind: str, level: float, source: _Source,
             rng: np.random.Generator) -> np.ndarray:
    """SPEC section 7's degradation of the reference at ``level``, slice by slice."""
    reference, table = source.reference, card.degradation
    if kind == "kspace":
        return deg.kspace_truncate(reference, card.scale)
    if kind == "block_mean":
        return deg.block_mean(reference, card.scale)
    if kind == "rician":
        return deg.rand_rician(reference, level * source.series_p99, rng)
    if kind == "poisson_gaussian":
        photometric = str(source.datasets[0].PhotometricInterpretation)
        return deg.rand_poisson_gaussian(
            reference, level, float(table.get("read_noise", 0.002)), rng,
            value_range=source.series_range,
            signal_increases_with_value=photometric == "MONOCHROME1")
    spacing = float(source.datasets[0].PixelSpacing[0])
    views = int(table.get("views", deg.CT_VIEWS))
    if source.sinograms is None:
        source.sinograms = [deg.ct_sinogram(image, spacing, views) for image in reference]
    noisy = np.stack([deg.rand_ct_low_dose(
        image, spacing, level, rng, i0=float(table.get("i0", deg.CT_I0)), views=views,
        sinogram=sinogram) for image, sinogram in zip(reference, source.sinograms, strict=True)])
    # A real low-dose scan keeps its padding exact (the simulation adds noise there too).
    return np.where(source.padding, reference, noisy)


def _write_inputs(folder: Path, source: _Source, degraded: np.ndarray, scale: int
                  ) -> np.ndarray:
    """The degraded slices as DICOM files (stored values, uncompressed), and their modality
    values as read back: what the node and the baselines are given."""
    folder.mkdir(parents=True)
    read_back = []
    for number, (ds, values) in enumerate(zip(source.datasets, degraded, strict=True)):
        out = copy.deepcopy(ds)
        fmt = pixel_format(ds)
        rows, columns = values.shape
        out.Rows, out.Columns = rows, columns
        if scale > 1 and "PixelSpacing" in ds:
            out.PixelSpacing = [float(v) * scale for v in ds.PixelSpacing]
        data = np.ascontiguousarray(stored_values(values, fmt))
        out.PixelData = data.astype(data.dtype.newbyteorder("<")).tobytes()
        out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.InstanceNumber = number + 1
        out.Modality = source.modality or out.Modality
        path = folder / f"{number:02d}.dcm"
        out.save_as(path, enforce_file_format=True)
        read_back.append(modality_values(pydicom.dcmread(path)).astype(np.float64))
    return np.stack(read_back)


def _run_node(enhancer: object, folder: Path, source: _Source) -> np.ndarray:
    """The node's path: scan the folder, enhance the series, write and read the derived files."""
    (series,) = scan(folder / "in").series
    out = folder / "out"
    derivation = derivation_for(enhancer.card, "quality", " [quality]")  # type: ignore[attr-defined]

    def sink(ds: Dataset) -> Path:
        return write_dataset(ds, out / f"{ds.SOPInstanceUID}.dcm", fsync=False)

    outcome = enhance_series(series, enhancer, derivation, sink)  # type: ignore[arg-type]
    if outcome.rejected or outcome.skipped_reason or len(outcome.written) != len(
            source.datasets):
        raise AssertionError(f"the node did not derive every slice: {outcome}")
    by_source = {}
    for path in outcome.written:
        ds = pydicom.dcmread(path)
        by_source[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)] = (
            modality_values(ds).astype(np.float64))
    return np.stack([by_source[str(ds.SOPInstanceUID)] for ds in source.datasets])


def _baselines(kind: str, scale: int, inputs: np.ndarray, source: _Source
               ) -> dict[str, np.ndarray]:
    """SPEC section 7's baselines on the values the network saw (a CT's padding filled, as the
    node fills it, and put back after)."""
    if kind in BASELINES:
        result = {}
        if "zero_filled" in BASELINES[kind]:
            result["zero_filled"] = deg.zero_filled(inputs, scale)
        result["bicubic"] = np.stack([bicubic_upscale(s, scale) for s in inputs])
        return {k: v.astype(np.float64) for k, v in result.items()}
    shown = inputs
    if fills_padding(str(source.datasets[0].Modality)) and source.padding.any():
        shown = np.stack([fill_padding(x, m) for x, m in zip(inputs, source.padding,
                                                             strict=True)])
    denoised = np.stack([nl_means(s) for s in shown]).astype(np.float64)
    return {"nl_means": np.where(source.padding, source.reference, denoised)}


def _score(source: _Source, output: np.ndarray) -> Score:
    """PSNR over the non-padding pixels and mean slice SSIM, both with the reference's range."""
    reference = source.reference
    if output.shape != reference.shape:
        raise AssertionError(f"output shape {output.shape}, reference {reference.shape}")
    keep = ~source.padding
    span = float(reference[keep].max() - reference[keep].min()) or 1.0
    mse = float(np.mean((reference[keep] - output[keep]) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(span * span / mse)
    ssim = float(np.mean([structural_similarity(
        r, o, data_range=span, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for r, o in zip(reference, output, strict=True)]))
    return Score(psnr, ssim)


# --- a zoo whose weights are random: what the test must refuse --------------------------------

RANDOM_KINDS = ("init", "randn")


def randomise_zoo(source_zoo: Path, target: Path, kind: str = "init", seed: int = 0,
                  names: list[str] | None = None) -> Path:
    """Copy ``source_zoo`` to ``target`` with the learned models' weights (``names``, default
    all) replaced by random tensors of the same shapes, and the card's sha256 updated as a
    re-export would write it.

    ``init``: the network's own random initialisation (an untrained model: small, smooth
    outputs, the hardest to tell from a baseline); ``randn``: standard normal tensors.
    """
    import shutil

    if kind not in RANDOM_KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {RANDOM_KINDS}")
    shutil.copytree(source_zoo, target, symlinks=False)
    for name in learned_names(target) if names is None else names:
        card = load_card(name, target)
        torch.manual_seed(seed)
        state = build_network(card.architecture, dict(card.parameters)).state_dict()
        if kind == "randn":
            state = {k: torch.randn(v.shape) if v.is_floating_point() else v
                     for k, v in state.items()}
        replace_weights(card, {k: v.contiguous() for k, v in state.items()})
    return target


def replace_weights(card: ModelCard, state: Mapping[str, torch.Tensor]) -> None:
    """Write ``state`` as the card's weights and put their sha256 on the card."""
    path = card.weights_path
    save_file(dict(state), str(path))
    new = hashlib.sha256(path.read_bytes()).hexdigest()
    text = (card.folder / "model.toml").read_text(encoding="utf-8")
    assert card.weights_sha256 in text
    (card.folder / "model.toml").write_text(text.replace(card.weights_sha256, new),
                                            encoding="utf-8")
