"""``dicomnode-train evaluate``: SPEC section 8 metrics of a model and every baseline, one run.

The model and the baselines of SPEC section 7 get the same degraded slices (seeded by series
and level, so the numbers on a card are reproduced exactly by re-running this), and a PNG panel
per series and level shows input, best baseline, model, reference and the model's error. The
model runs through the node's engine (card normalisation, tiled inference, guards:
``dicomnode.engine.volume.enhance_volume``), so its numbers are those of the node's pixels.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors
from torch import nn

from dicomnode.engine import Enhancer
from dicomnode.engine.cards import ModelCard, check_runnable, load_card
from dicomnode.engine.choices import PRECISIONS
from dicomnode.engine.guards import apply_guards, default_guards
from dicomnode.engine.learned import build_model, network_enhancer
from dicomnode.engine.normalise import NormalisationSpec
from dicomnode.engine.volume import enhance_volume
from dicomnode.padding import fill_padding, fills_padding
from training.checkpoint import Setup, make_setup, read_checkpoint
from training.config import parse_config
from training.data import SeriesData, stable_seed
from training.metrics import average, beats, series_metrics
from training.regions import MARGIN, padding_pixels, pooled_rms, squared_errors, worse_regions
from training.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model as the node runs it (the engine's enhancer), with the task it is evaluated on.

    ``card`` is the zoo's card; a network from a checkpoint or from a run in progress gets a
    card made in memory (:func:`in_memory_card`) from the run's task and normalisation.
    """

    name: str
    network: nn.Module
    task: Task
    norm: NormalisationSpec
    channels: int
    modalities: tuple[str, ...]
    guards: tuple[str, ...] = ()
    card: ModelCard | None = None
    batch_size: int = 8

    @property
    def scale(self) -> int:
        return self.task.scale

    def enhancer(self, device: str = "cpu", amp: str = "none") -> Enhancer:
        """The engine's enhancer of this network, with ``guards`` on (the node's guards)."""
        card = self.card if self.card is not None else in_memory_card(self)
        card = dataclasses.replace(card, guards=guard_settings(card.task, self.guards))
        # a copy: the engine puts a network in eval mode, channels_last, on its device, and a
        # run in progress keeps training its own
        network = copy.deepcopy(self.network) if self.card is None else self.network
        return network_enhancer(card, network, device=device, precision=PRECISION[amp],
                                batch_size=self.batch_size)

    def predict(self, inputs: np.ndarray, device: str = "cpu", amp: str = "none") -> np.ndarray:
        """The node's output for a series held in memory (``engine.volume.enhance_volume``):
        the card's normalisation, the engine's tiled inference, the node's guards."""
        return enhance_volume(self.enhancer(device, amp), inputs, self.batch_size)

    def accepts(self, modality: str) -> bool:
        return "*" in self.modalities or modality.upper() in self.modalities


PRECISION = {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}  # training's amp -> the engine's


def guard_settings(task: str, guards: tuple[str, ...]) -> dict[str, bool]:
    """A card's ``[guards]`` table that turns on exactly ``guards``."""
    return {**{name: False for name in default_guards(task)}, **dict.fromkeys(guards, True)}


def in_memory_card(model: LoadedModel) -> ModelCard:
    """The card export would write for ``model`` (without metrics), its sha256 that of the
    network's weights as they are now."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.network.state_dict().items()}
    return ModelCard(
        name=model.name, version="in-memory", task=model.task.task, scale=model.task.scale,
        modalities=tuple(model.modalities), description="a network in training or a checkpoint",
        architecture=type(model.network).__name__, parameters={}, normalisation=model.norm.table(),
        degradation=model.task.card(), training={}, metrics={},
        guards=guard_settings(model.task.task, model.guards),
        weights_sha256=hashlib.sha256(save_safetensors(state)).hexdigest(),
        folder=Path(model.name), precisions=PRECISIONS)


def network_model(setup: Setup, network: nn.Module) -> LoadedModel:
    """A run's network (in training or from a checkpoint) with the guards the node gives it."""
    return LoadedModel(setup.config.name, network, setup.task, setup.norm, setup.channels,
                       setup.config.modalities, default_guards(setup.task.task))


def guarded(guards: tuple[str, ...], output: np.ndarray, inputs: np.ndarray,
            task: Task) -> np.ndarray:
    """``dicomnode.engine.guards`` on an output computed elsewhere (the guard bound's perfect
    output); the models' own outputs are guarded inside the engine."""
    if not guards:
        return output
    return apply_guards(guards, output, inputs, task.scale, degradation=task.kind)


def node_inputs(inputs: np.ndarray, reference: np.ndarray,
                padding: tuple[float, float] | None, modality: str, scale: int = 1
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The degraded slices as the node shows them to a method, and the padding mask.

    The node fills a source's declared padding before any method runs and puts it back exactly
    afterwards (``dicomnode.padding``); the model and the baselines get the same here. A real
    low-dose scan has exact padding, but the SPEC degradation adds noise there, so the mask is
    taken from the clean series, where the declared value is exact. Denoising only (scale 1):
    super-resolution inputs are smaller than the reference, and no shipped one meets padding.
    Other modalities' declared padding is only restored, as in the node (``fills_padding``).
    """
    if padding is None or scale != 1:
        return inputs, None
    mask = padding_pixels(reference, padding)
    if not mask.any():
        return inputs, None
    if not fills_padding(modality):
        return inputs, mask
    filled = np.stack([fill_padding(x, m) for x, m in zip(inputs, mask, strict=True)])
    return filled.astype(inputs.dtype, copy=False), mask


def evaluation_slices(task: Task, s: SeriesData, level: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(degraded inputs, reference, what the methods are shown, padding mask) of one series at
    one level, seeded by series and level so every run and every bench sees the same slices."""
    rng = np.random.default_rng(stable_seed("eval", s.key, level))
    inputs = task.degrade_series(s, level, rng)
    reference = task.reference(s)
    shown, mask = node_inputs(inputs, reference, s.padding, s.modality, task.scale)
    return inputs, reference, shown, mask


def restore_padding(output: np.ndarray, reference: np.ndarray, mask: np.ndarray | None
                    ) -> np.ndarray:
    """``output`` with the padding put back as the node writes it: the source's exact value."""
    if mask is None:
        return output
    out = np.array(output, copy=True)
    out[mask] = reference[mask]
    return out


def load_model(name_or_checkpoint: str, models_dir: Path | None = None) -> LoadedModel:
    """A checkpoint (file or run folder) if the path exists, else a model card from the zoo.

    A card's network is built by the engine (``dicomnode.engine.learned.build_model``: weights
    checked against the card's sha256, safetensors only, every tensor and shape checked), and
    runs as the node runs it.
    """
    path = Path(name_or_checkpoint)
    if path.exists():
        weights, meta = read_checkpoint(path)
        config = parse_config(json.loads(meta["config"]), source=str(path))
        setup = make_setup(config)
        network = setup.build_generator()
        network.load_state_dict(weights)
        return network_model(setup, network.eval())
    card = load_card(name_or_checkpoint, models_dir)
    if not card.learned:
        raise ValueError(f"model {card.name!r} is classical ({card.architecture}): it is a "
                         "baseline, evaluated alongside every learned model")
    check_runnable(card)
    network = build_model(card)
    channels = int(getattr(network, "in_channels", 1))
    return LoadedModel(card.name, network, Task.from_card(card.degradation),
                       card.normalisation_spec, channels, card.modalities,
                       tuple(card.active_guards), card=card)


def evaluate(
    model: LoadedModel,
    series: list[SeriesData],
    panels: Path | None = None,
    *,
    device: str = "cpu",
    amp: str = "none",
    progress: bool = False,
) -> dict[str, Any]:
    """Per-series and mean PSNR/SSIM of the model and the baselines at each evaluation level."""
    task = model.task
    chosen = [s for s in series if model.accepts(s.modality)]
    skipped = [s.key for s in series if not model.accepts(s.modality)]
    result: dict[str, Any] = {
        "model": model.name, "task": task.task, "degradation": task.card(),
        "series": len(chosen), "slices": int(sum(len(s.slices) for s in chosen)),
        "skipped_series": skipped, "guards": list(model.guards), "levels": {},
    }
    iterator: Any = [(s, lv) for s in chosen for lv in task.eval_levels]
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="evaluate", unit="series")
    per_level: dict[str, list[dict[str, Any]]] = {}
    region_sums: dict[str, list[dict[str, dict[str, list[float]]]]] = {}
    for s, level in iterator:
        inputs, reference, shown, mask = evaluation_slices(task, s, level)
        with torch.inference_mode():
            output = restore_padding(model.predict(shown, device=device, amp=amp), reference,
                                     mask)
        baselines = {name: restore_padding(result, reference, mask)
                     for name, result in task.baselines(shown).items()}
        outputs = {"model": output, **baselines}
        if task.task == "denoise":
            outputs["input"] = inputs
        scores = series_metrics(reference, outputs)
        sums = squared_errors(reference, outputs, s.padding)
        region_sums.setdefault(str(level), []).append(sums)
        per_level.setdefault(str(level), []).append({
            "series": s.series_uid, "patient_index": _patient_index(chosen, s),
            "modality": s.modality, "slices": len(s.slices), "metrics": scores,
            "region_rms": pooled_rms([sums])})
        if panels is not None:
            best = max(baselines, key=lambda k: scores[k]["psnr"])
            write_panel(panels / f"{_safe(s.series_uid)}_{level:g}.png", inputs, baselines[best],
                        best, output, reference, title=f"{model.name} @ {level:g}",
                        window=CT_WINDOW if s.modality == "CT" else None,
                        inverted=s.photometric == "MONOCHROME1")
    all_beat = True
    regions_ok = True
    for level, rows in per_level.items():
        mean = average([r["metrics"] for r in rows])
        wins = {name: beats(mean["model"], mean[name]) for name in mean
                if name not in ("model", "input")}
        gains = {name: {"psnr_db": mean["model"]["psnr"] - mean[name]["psnr"],
                        "ssim": mean["model"]["ssim"] - mean[name]["ssim"]}
                 for name in wins}
        for name in wins:
            if "psnr_foreground" in mean[name]:
                gains[name]["psnr_foreground_db"] = (mean["model"]["psnr_foreground"]
                                                     - mean[name]["psnr_foreground"])
        all_beat = all_beat and all(wins.values())
        best = max(wins, key=lambda name: mean[name]["psnr"])
        rms = pooled_rms(region_sums[level])
        worse = worse_regions(rms, best)
        regions_ok = regions_ok and not worse
        result["levels"][level] = {"per_series": rows, "mean": mean, "beats": wins,
                                   "gain": gains, "best_baseline": best, "region_rms": rms,
                                   "worse_regions": worse}
    result["beats_all_baselines"] = bool(per_level) and all_beat
    result["region_margin"] = MARGIN
    result["regions_ok"] = bool(per_level) and regions_ok
    return result


def _patient_index(series: list[SeriesData], s: SeriesData) -> int:
    """Patients are numbered, never named: reports stay free of patient identifiers."""
    return sorted({x.patient_id for x in series}).index(s.patient_id)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text)[-64:]


CT_WINDOW = (-160.0, 240.0)
"""Soft-tissue window (W 400, L 40): noise is invisible in a CT shown over its full range."""


def panel_crop(reference: np.ndarray, size: int = 128, step: int = 32) -> tuple[slice, slice]:
    """The ``size`` square (or the whole side, if smaller) of the slice with the most structure
    (largest variance of the reference, on a ``step``-pixel grid): the second row of a panel
    shows it pixel by pixel, where blur, texture and noise can be judged. A flat crop (the
    middle of a bright mediastinum) would show none of them."""
    rows, cols = reference.shape
    h, w = min(size, rows), min(size, cols)
    tops = sorted({*range(0, rows - h + 1, step), rows - h})
    lefts = sorted({*range(0, cols - w + 1, step), cols - w})
    image = np.asarray(reference, dtype=np.float64)
    _, top, left = max((float(image[t:t + h, c:c + w].var()), t, c)
                       for t in tops for c in lefts)
    return slice(top, top + h), slice(left, left + w)


def write_panel(path: Path, inputs: np.ndarray, baseline: np.ndarray, baseline_name: str,
                output: np.ndarray, reference: np.ndarray, title: str = "",
                window: tuple[float, float] | None = None, inverted: bool = False) -> None:
    """Input, best baseline, model, reference and model - reference, for the middle slice: the
    whole slice above, a 128-pixel crop (every pixel shown, enlarged) below.

    ``inverted`` (MONOCHROME1: high values display dark) shows the images as a viewer does."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    i = len(reference) // 2
    low, high = window or np.percentile(reference[i], [1, 99.5])
    error = output[i] - reference[i]
    limit = float(np.percentile(np.abs(error), 99.5)) or 1.0
    images = [(inputs[i], "input"), (baseline[i], f"baseline: {baseline_name}"),
              (output[i], "model"), (reference[i], "reference")]
    crop = panel_crop(reference[i])
    fig, axes = plt.subplots(2, 5, figsize=(20, 8.8))
    for row in range(2):
        suffix = " (128-px crop)" if row else ""
        for ax, (image, label) in zip(axes[row], images, strict=False):
            factor = reference[i].shape[0] // image.shape[0]  # a super-resolution input
            part = (tuple(slice(c.start // factor, c.stop // factor) for c in crop) if row
                    else (slice(None), slice(None)))
            ax.imshow(image[part], cmap="gray_r" if inverted else "gray", vmin=low, vmax=high,
                      interpolation="nearest")
            ax.set_title(label + suffix)
        part = crop if row else (slice(None), slice(None))
        axes[row][4].imshow(error[part], cmap="seismic", vmin=-limit, vmax=limit,
                            interpolation="nearest")
        axes[row][4].set_title(f"model - reference (+/-{limit:.3g}){suffix}")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=72, format="png")
    plt.close(fig)


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A readable table: mean PSNR/SSIM per level for the model and every baseline."""
    lines = [f"{result['model']}: {result['series']} series, {result['slices']} slices"]
    if "guards" in result:
        lines.append("  guards: " + (", ".join(result["guards"]) or
                                     "none (the network alone, not what the node delivers)"))
    for level, block in result["levels"].items():
        lines.append(f"  level {level}:")
        for name, m in block["mean"].items():
            fg = (f"  (foreground PSNR {m['psnr_foreground']:.2f} dB)"
                  if "psnr_foreground" in m else "")
            lines.append(f"    {name:12s} PSNR {m['psnr']:7.2f} dB  SSIM {m['ssim']:.4f}{fg}")
        lines.append("    beats: " + ", ".join(f"{k}={'yes' if v else 'NO'}"
                                               for k, v in block["beats"].items()))
        if "region_rms" in block:
            lines.extend(_region_lines(block))
    return lines


def _region_lines(block: dict[str, Any]) -> list[str]:
    """RMS error per region, model vs the best baseline, and the regions that fail the check."""
    best = block["best_baseline"]
    cells = []
    for region, by_name in block["region_rms"].items():
        ours, theirs = by_name.get("model"), by_name.get(best)
        if ours is not None and theirs is not None:
            cells.append(f"{region} {ours:.3g}/{theirs:.3g}")
    lines = [f"    RMS error by region, model/{best}: " + ", ".join(cells)]
    for w in block["worse_regions"]:
        excess = f"+{w['excess'] * 100:.0f} %" if w["excess"] is not None else "baseline exact"
        lines.append(f"    WORSE than {best} in {w['region']}: {w['model_rms']:.3g} vs "
                     f"{w['baseline_rms']:.3g} RMS ({excess})")
    return lines


def markdown_rows(result: dict[str, Any]) -> list[str]:
    """One Markdown table row per level: model and baselines, mean PSNR / SSIM, gains."""
    rows = []
    level_name = result["degradation"]["level"]
    for level, block in result["levels"].items():
        mean = block["mean"]
        cells = " | ".join(f"{name} {m['psnr']:.2f} / {m['ssim']:.4f}"
                           for name, m in mean.items() if name != "model")
        gains = ", ".join(f"{g['psnr_db']:+.2f} dB vs {name}"
                          + (f" ({g['psnr_foreground_db']:+.2f} dB in tissue)"
                             if "psnr_foreground_db" in g else "")
                          for name, g in block["gain"].items())
        verdict = "yes" if all(block["beats"].values()) else "no"
        rows.append(f"| {result['model']} | {level_name} {level} | {mean['model']['psnr']:.2f} / "
                    f"{mean['model']['ssim']:.4f} | {cells} | {gains} | {verdict} |")
    return rows
