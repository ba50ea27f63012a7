"""The training config (TOML), read into one checked object; every problem names its key.

Relative data paths are resolved from the repository root, so the shipped configs can say
``../shared/data/train/...`` and work from any working directory.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomnode.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

_SECTIONS = {
    "name", "version", "description", "modalities", "seed", "data", "degradation",
    "normalisation", "architecture", "discriminator", "loss", "optimizer", "schedule", "train",
}
_DATA = {"train", "val", "val_fraction", "val_patients", "patch_size", "batch_size", "slices",
         "val_max_slices", "licences", "min_foreground", "context", "whole_slices", "invert",
         "slice_step"}
_LOSS = {"l1", "mse", "ssim", "adversarial", "adversarial_type", "perceptual",
         "perceptual_weights", "perceptual_layer", "padding_edge", "padding_edge_px"}
_OPT = {"name", "lr", "weight_decay", "betas", "d_lr"}
_SCHED = {"name", "warmup", "step_size", "gamma", "min_lr_ratio", "follow_time_limit"}
_TRAIN = {"iterations", "time_limit_minutes", "amp", "channels_last", "threads", "val_every",
          "checkpoint_every", "log_every", "out_dir", "device", "grad_clip", "d_start",
          "init_from", "prefill_workers"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; ``raw`` is kept verbatim for the checkpoint and the card."""

    name: str
    version: str
    description: str
    modalities: tuple[str, ...]
    seed: int
    data: dict[str, Any]
    degradation: dict[str, Any]
    normalisation: dict[str, Any]
    architecture: dict[str, Any]
    discriminator: dict[str, Any] | None
    loss: dict[str, Any]
    optimizer: dict[str, Any]
    schedule: dict[str, Any]
    train: dict[str, Any]
    raw: dict[str, Any] = field(compare=False, repr=False)

    @property
    def out_dir(self) -> Path:
        return resolve(self.train["out_dir"])

    def folders(self, key: str) -> list[Path]:
        return [resolve(p) for p in self.data.get(key, [])]


def resolve(path: str | Path) -> Path:
    """An absolute path, relative ones taken from the repository root."""
    path = Path(path)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"cannot read: {exc}"], source=str(path)) from None
    return parse_config(raw, source=str(path))


def parse_config(raw: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Check ``raw`` and fill defaults; raise ConfigError listing every problem at once."""
    problems: list[str] = [f"{k}: unknown key" for k in raw if k not in _SECTIONS]

    def table(key: str, allowed: set[str] | None, required: bool = False) -> dict[str, Any]:
        value = raw.get(key)
        if value is None:
            if required:
                problems.append(f"{key}: required table is missing")
            return {}
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table")
            return {}
        if allowed is not None:
            problems.extend(f"{key}.{k}: unknown key (accepted: {', '.join(sorted(allowed))})"
                            for k in value if k not in allowed)
        return dict(value)

    name = raw.get("name")
    if not isinstance(name, str) or not name:
        problems.append("name: required, the model name (models/NAME)")
        name = ""
    data = {"val": [], "val_fraction": 0.2, "val_patients": [], "patch_size": 64,
            "batch_size": 16, "slices": 1, "val_max_slices": 12, "licences": [],
            "min_foreground": 0.05, "context": 0, "whole_slices": False, "invert": False,
            "slice_step": 1, **table("data", _DATA, required=True)}
    if not data.get("train"):
        problems.append("data.train: required, a list of DICOM folders")
    for key in ("train", "val"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"data.{key}: expected a list of folder paths")
    if not isinstance(data["slices"], int) or data["slices"] < 1 or data["slices"] % 2 == 0:
        problems.append(f"data.slices = {data['slices']!r}: expected 1 or another odd number")
    for key in ("patch_size", "batch_size", "val_max_slices", "slice_step"):
        if not isinstance(data[key], int) or data[key] < 1:
            problems.append(f"data.{key} = {data[key]!r}: expected a positive integer")
    if data["slice_step"] != 1 and data["slices"] != 1:
        problems.append("data.slice_step: only with data.slices = 1 (2.5D needs the neighbours)")
    if not isinstance(data["context"], int) or isinstance(data["context"], bool) \
            or data["context"] < 0:
        problems.append(f"data.context = {data['context']!r}: expected 0 or a positive number "
                        "of input pixels")
    if not isinstance(data["whole_slices"], bool):
        problems.append(f"data.whole_slices = {data['whole_slices']!r}: expected true or false")
    elif data["whole_slices"] and data["context"]:
        problems.append("data.whole_slices = true takes no data.context: a whole slice has no "
                        "patch edges to keep out of the loss")
    degradation = table("degradation", None, required=True)
    if not isinstance(data["invert"], bool):
        problems.append(f"data.invert = {data['invert']!r}: expected true or false")
    elif data["invert"] and (degradation or {}).get("kind") != "poisson_gaussian":
        problems.append("data.invert = true applies to radiograph noise (degradation.kind = "
                        "\"poisson_gaussian\") only: it swaps MONOCHROME1 and MONOCHROME2")
    architecture = table("architecture", None, required=True)
    if architecture and not isinstance(architecture.get("name"), str):
        problems.append("architecture.name: required, a registered network (dicomnode models "
                        "--architectures)")
    discriminator = table("discriminator", None) or None
    if discriminator and data.get("context"):
        problems.append("data.context: not with a [discriminator] (its input would keep the "
                        "rim the loss leaves out); set context = 0")
    loss = {"l1": 1.0, "mse": 0.0, "ssim": 0.0, "adversarial": 0.0, "adversarial_type": "bce",
            "perceptual": 0.0, "perceptual_weights": "", "perceptual_layer": 34,
            "padding_edge": 0.0, "padding_edge_px": 3, **table("loss", _LOSS)}
    if loss["adversarial_type"] not in ("bce", "relativistic"):
        problems.append(f"loss.adversarial_type = {loss['adversarial_type']!r}: expected 'bce' "
                        "or 'relativistic'")
    if loss["adversarial"] > 0 and discriminator is None:
        problems.append("loss.adversarial > 0 needs a [discriminator] table")
    edge, edge_px = loss["padding_edge"], loss["padding_edge_px"]
    if not isinstance(edge, int | float) or isinstance(edge, bool) or edge < 0:
        problems.append(f"loss.padding_edge = {edge!r}: expected 0 (off) or a positive extra "
                        "weight")
    elif edge > 0 and (degradation or {}).get("kind") != "ct_low_dose":
        problems.append("loss.padding_edge > 0 applies to CT (degradation.kind = "
                        "\"ct_low_dose\") only: it weights the pixels next to the padding "
                        "outside the reconstruction circle")
    if not isinstance(edge_px, int) or isinstance(edge_px, bool) or edge_px < 1:
        problems.append(f"loss.padding_edge_px = {edge_px!r}: expected a positive number of "
                        "pixels")
    if loss["perceptual"] > 0 and not loss["perceptual_weights"]:
        problems.append("loss.perceptual > 0 needs loss.perceptual_weights, a local safetensors "
                        "file (nothing is downloaded)")
    optimizer = {"name": "adamw", "lr": 2e-4, "weight_decay": 0.0, "betas": [0.9, 0.999],
                 **table("optimizer", _OPT)}
    if optimizer["name"] not in ("adam", "adamw"):
        problems.append(f"optimizer.name = {optimizer['name']!r}: expected 'adam' or 'adamw'")
    optimizer.setdefault("d_lr", optimizer["lr"])
    schedule = {"name": "cosine", "warmup": 0, "step_size": 1000, "gamma": 0.5,
                "min_lr_ratio": 0.01, "follow_time_limit": False, **table("schedule", _SCHED)}
    if schedule["name"] not in ("cosine", "step", "constant"):
        problems.append(f"schedule.name = {schedule['name']!r}: expected cosine, step or "
                        "constant")
    train = {"iterations": 1000, "time_limit_minutes": 0.0, "amp": "none",
             "channels_last": True, "threads": 1, "val_every": 200, "checkpoint_every": 200,
             "log_every": 20, "out_dir": f"runs/{name}", "device": "auto", "grad_clip": 0.0,
             "d_start": 0, "init_from": "", "prefill_workers": 0, **table("train", _TRAIN)}
    if not isinstance(schedule["follow_time_limit"], bool):
        problems.append(f"schedule.follow_time_limit = {schedule['follow_time_limit']!r}: "
                        "expected true or false")
    elif schedule["follow_time_limit"] and (
            schedule["name"] != "cosine" or not train["time_limit_minutes"]):
        problems.append("schedule.follow_time_limit = true needs schedule.name = \"cosine\" "
                        "and a train.time_limit_minutes above 0 to follow")
    if train["amp"] not in ("none", "bf16", "fp16"):
        problems.append(f"train.amp = {train['amp']!r}: expected none, bf16 or fp16")
    if not isinstance(train["iterations"], int) or train["iterations"] < 1:
        problems.append(f"train.iterations = {train['iterations']!r}: expected >= 1")
    workers = train["prefill_workers"]
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        problems.append(f"train.prefill_workers = {workers!r}: expected 0 (simulate CT noise "
                        "as training first needs it) or a number of processes")
    modalities = raw.get("modalities", [])
    if not isinstance(modalities, list) or not modalities:
        problems.append("modalities: required, e.g. [\"MR\"]")
        modalities = []
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"seed = {seed!r}: expected an integer")
        seed = 0
    if problems:
        raise ConfigError(problems, source=source)
    return TrainConfig(
        name=name, version=str(raw.get("version", "1.0.0")),
        description=str(raw.get("description", "")),
        modalities=tuple(str(m).upper() for m in modalities), seed=seed, data=data,
        degradation=degradation, normalisation=table("normalisation", None),
        architecture=architecture, discriminator=discriminator, loss=loss,
        optimizer=optimizer, schedule=schedule, train=train, raw=dict(raw),
    )
