"""Run folders: what a run is built from, and its checkpoints (read by train, evaluate, export).

Kept apart from ``training.train`` so that evaluation and export can rebuild a network from a
checkpoint without importing the training loop (which imports evaluation for its validation).
Every write is atomic (temporary file, then ``os.replace``): a run killed mid-write leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dicomnode.engine.cards import load_card, verify_weights
from dicomnode.engine.normalise import NormalisationSpec
from dicomnode.errors import ConfigError
from dicomnode.nets import build_network
from training.config import TrainConfig, resolve
from training.tasks import Task, read_normalisation

CHECKPOINT = "checkpoint.safetensors"
DISCRIMINATOR = "discriminator.safetensors"
OPTIMIZER = "optimizer.pt"
HISTORY = "history.json"
CURVES = "curves.png"
EVAL = "eval.json"
FORMAT = "dicomnode-train/1"


@dataclass
class Setup:
    """What a run is built from; also what evaluation and export rebuild from a checkpoint."""

    config: TrainConfig
    task: Task
    norm: NormalisationSpec  # the card's schema: what export writes and the node reads

    @property
    def scale(self) -> int:
        return self.task.scale

    @property
    def channels(self) -> int:
        return int(self.config.data["slices"])

    def architecture_params(self) -> dict[str, Any]:
        params = {k: v for k, v in self.config.architecture.items() if k != "name"}
        if self.channels > 1:
            params.setdefault("in_channels", self.channels)
            params.setdefault("out_channels", 1)
        if self.task.task == "super-resolution":
            params.setdefault("scale", self.scale)
        return params

    def build_generator(self) -> nn.Module:
        return build_network(self.config.architecture["name"], self.architecture_params())


def make_setup(config: TrainConfig) -> Setup:
    cache = config.out_dir / "cache"
    task = Task.from_config(config.degradation, cache_dir=cache)
    return Setup(config, task, read_normalisation(config.normalisation))


# --- checkpoints --------------------------------------------------------------------------------

def _plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    inner = module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module
    return {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}


def atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(out: Path, setup: Setup, iteration: int, generator: nn.Module,
                    discriminator: nn.Module | None, opt_g: torch.optim.Optimizer,
                    opt_d: torch.optim.Optimizer | None, history: dict[str, Any]) -> None:
    """Weights (safetensors, config in the metadata), optimiser state, history; each atomic."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "iteration": str(iteration),
            "config": json.dumps(setup.config.raw, sort_keys=True)}
    atomic_write(out / CHECKPOINT, lambda p: save_file(_plain_state(generator), str(p), meta))
    if discriminator is not None:
        atomic_write(out / DISCRIMINATOR,
                lambda p: save_file(_plain_state(discriminator), str(p), meta))
    state = {"iteration": iteration, "generator": opt_g.state_dict(),
             "discriminator": opt_d.state_dict() if opt_d is not None else {}}
    atomic_write(out / OPTIMIZER, lambda p: torch.save(state, p))
    atomic_write(out / HISTORY, lambda p: p.write_text(json.dumps(history, indent=1)))


ZOO_PREFIX = "zoo:"


def initial_weights(source: str, config: TrainConfig, setup: Setup
                    ) -> tuple[dict[str, torch.Tensor], str]:
    """Generator weights a fine-tuning run starts from, and what they are: a run folder or
    checkpoint file, or ``zoo:NAME``, a model of the zoo (``$DICOMNODE_MODELS`` or ``models/``,
    sha256 checked).

    The zoo form lets a site fine-tune a shipped model on its own data without the run folder
    it was trained in; the config must build the same network the card describes. Its
    description names the card's version and weights hash: ``zoo:NAME`` moves on when a new
    version ships, and the exported card must still say which one this run started from.
    """
    if not source.startswith(ZOO_PREFIX):
        weights, _meta = read_checkpoint(resolve(source))
        return weights, source
    card = load_card(source[len(ZOO_PREFIX):])
    wanted = setup.architecture_params()
    if card.architecture != config.architecture["name"] or dict(card.parameters) != wanted:
        raise ConfigError([f"train.init_from = {source!r}: the card's network is "
                           f"{card.architecture} {dict(card.parameters)}, this config builds "
                           f"{config.architecture['name']} {wanted}; copy the card's "
                           "[architecture] into the config"], source=config.name)
    return (load_file(str(verify_weights(card))),
            f"{source} {card.version} (weights sha256 {card.weights_sha256})")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights and metadata of a checkpoint file or run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata() or {})
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dicomnode-train checkpoint (format "
                         f"{meta.get('format')!r})")
    return load_file(str(path)), meta
