"""The model zoo: ``models/NAME/model.toml`` cards, checked, and the enhancers they describe.

A card is the contract between training and the node: what the model does, for which
modalities, how inputs are normalised, what degradation it was trained for, how it scored
against the baselines, and the sha256 of its weights (safetensors only: loading a model never
runs code from a file).
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dicomnode.errors import ModelError

TASKS = ("super-resolution", "denoise")
WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "model.toml"
ZOO_ENV = "DICOMNODE_MODELS"
_CARD_KEYS = (
    "name", "version", "task", "scale", "modalities", "description", "architecture",
    "normalisation", "degradation", "training", "metrics", "guards", "weights",
)


@dataclass(frozen=True)
class ModelCard:
    name: str
    version: str
    task: str
    scale: int
    modalities: tuple[str, ...]
    description: str
    architecture: str
    parameters: Mapping[str, Any]
    normalisation: Mapping[str, Any]
    degradation: Mapping[str, Any]
    training: Mapping[str, Any]
    metrics: Mapping[str, Any]
    guards: Mapping[str, bool]
    weights_sha256: str | None
    folder: Path = field(compare=False)

    @property
    def learned(self) -> bool:
        return self.weights_sha256 is not None

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS_FILE

    def accepts_modality(self, modality: str) -> bool:
        return "*" in self.modalities or modality.upper() in self.modalities


class Enhancer(Protocol):
    """Turns a stack of slices (N, H, W) in modality values into (N, H*f, W*f)."""

    card: ModelCard

    def __call__(self, stack: np.ndarray) -> np.ndarray: ...


def default_zoo_dir() -> Path:
    """``$DICOMNODE_MODELS`` or the repository's ``models/`` folder."""
    env = os.environ.get(ZOO_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models"


def model_names(zoo_dir: Path | None = None) -> list[str]:
    zoo_dir = zoo_dir or default_zoo_dir()
    if not zoo_dir.is_dir():
        return []
    return sorted(p.name for p in zoo_dir.iterdir() if (p / CARD_FILE).is_file())


def list_cards(zoo_dir: Path | None = None) -> tuple[list[ModelCard], list[str]]:
    """Every valid card, plus one problem line per invalid one (a bad card hides no others)."""
    zoo_dir = zoo_dir or default_zoo_dir()
    cards, problems = [], []
    for name in model_names(zoo_dir):
        try:
            cards.append(load_card(name, zoo_dir))
        except ModelError as exc:
            problems.append(str(exc))
    return cards, problems


def load_card(name: str, zoo_dir: Path | None = None) -> ModelCard:
    zoo_dir = zoo_dir or default_zoo_dir()
    folder = zoo_dir / name
    path = folder / CARD_FILE
    if not path.is_file():
        available = ", ".join(model_names(zoo_dir)) or "none"
        raise ModelError(f"model {name!r}: no {path}; models available: {available}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelError(f"{path}: cannot read the card: {exc}") from None
    return parse_card(raw, folder)


def parse_card(raw: Mapping[str, Any], folder: Path) -> ModelCard:
    where = folder / CARD_FILE
    problems = [f"{k}: unknown key" for k in raw if k not in _CARD_KEYS]

    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        value = raw.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"{key}: required, expected {getattr(kind, '__name__', kind)}, "
                            f"got {value!r}")
            return None
        return value

    name, version, task = need("name", str), need("version", str), need("task", str)
    scale = need("scale", int)
    modalities = need("modalities", list)
    architecture = raw.get("architecture")
    if not isinstance(architecture, dict) or not isinstance(architecture.get("name"), str):
        problems.append("architecture.name: required, the registered network or algorithm")
        architecture = {"name": ""}
    if name is not None and name != folder.name:
        problems.append(f"name: {name!r} differs from its folder name {folder.name!r}")
    if task is not None and task not in TASKS:
        problems.append(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    if scale is not None and (scale < 1 or (task == "denoise" and scale != 1)):
        problems.append(f"scale: expected 1 for denoise, 2-8 for super-resolution, got {scale}")
    weights = raw.get("weights", {})
    sha = weights.get("sha256") if isinstance(weights, dict) else None
    if not isinstance(weights, dict) or (sha is not None and not _is_sha256(sha)):
        problems.append("weights.sha256: expected 64 hex digits (or no [weights] for classical)")
        sha = None
    guards = raw.get("guards", {})
    if not isinstance(guards, dict) or not all(isinstance(v, bool) for v in guards.values()):
        problems.append("guards: expected a table of name = true/false")
        guards = {}
    if problems:
        raise ModelError(f"{where}: invalid card: " + "; ".join(problems))
    params = {k: v for k, v in architecture.items() if k != "name"}
    return ModelCard(
        name=name, version=version, task=task, scale=scale,
        modalities=tuple(str(m).upper() for m in modalities),
        description=str(raw.get("description", "")),
        architecture=architecture["name"], parameters=params,
        normalisation=dict(raw.get("normalisation", {})),
        degradation=dict(raw.get("degradation", {})),
        training=dict(raw.get("training", {})),
        metrics=dict(raw.get("metrics", {})),
        guards=dict(guards), weights_sha256=sha, folder=folder,
    )


def verify_weights(card: ModelCard) -> Path:
    """The weights file, after checking it exists and its sha256 matches the card."""
    path = card.weights_path
    if not path.is_file():
        raise ModelError(f"model {card.name!r}: weights file {path} is missing")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != card.weights_sha256:
        raise ModelError(
            f"model {card.name!r}: {path} has sha256 {digest.hexdigest()}, the card says "
            f"{card.weights_sha256}; the file was changed or damaged: re-export the model"
        )
    return path


def load_model(name: str, zoo_dir: Path | None = None, device: str = "cpu") -> Enhancer:
    """The enhancer a card describes: classical algorithms or a network from safetensors."""
    from dicomnode.classical import CLASSICAL

    card = load_card(name, zoo_dir)
    if not card.learned:
        factory = CLASSICAL.get(card.architecture)
        if factory is None:
            raise ModelError(
                f"model {card.name!r}: architecture {card.architecture!r} is not a classical "
                f"algorithm ({', '.join(sorted(CLASSICAL))}) and the card has no weights.sha256"
            )
        return factory(card)
    verify_weights(card)
    raise ModelError(
        f"model {card.name!r}: learned networks ({card.architecture}) are not loadable by "
        "this version yet"
    )


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(
        c in "0123456789abcdef" for c in value
    )
