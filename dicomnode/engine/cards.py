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
from typing import Any

from dicomnode.engine.choices import PRECISIONS
from dicomnode.engine.guards import (
    active_guards,
    degradation_name,
    requirement_problems,
    setting_problems,
)
from dicomnode.engine.normalise import NormalisationSpec, parse_normalisation
from dicomnode.errors import ModelError

TASKS = ("super-resolution", "denoise")
WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "model.toml"
ZOO_ENV = "DICOMNODE_MODELS"
_CARD_KEYS = (
    "name", "version", "task", "scale", "modalities", "description", "architecture",
    "normalisation", "degradation", "training", "metrics", "cross_scanner_metrics", "guards",
    "weights", "inference", "review",
)
_INFERENCE_KEYS = ("precisions",)


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
    # Number formats in which the model was validated (``[inference] precisions``); fp16/bf16
    # are used only where listed, because accuracy in them is a property of the trained model.
    precisions: tuple[str, ...] = ("fp32",)
    # A reviewer's sign-off on what the evaluation flagged (``[review] waived_regions`` and
    # ``reason``): kept apart from [metrics], which evaluate --update-card rewrites.
    review: Mapping[str, Any] = field(default_factory=dict, compare=False)
    # The same evaluation on series from scanner models absent from the training data (SPEC
    # section 10: the targets apply to these); empty for a card evaluated in-distribution only.
    cross_scanner_metrics: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def learned(self) -> bool:
        return self.weights_sha256 is not None

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS_FILE

    def accepts_modality(self, modality: str) -> bool:
        return "*" in self.modalities or modality.upper() in self.modalities

    @property
    def active_guards(self) -> tuple[str, ...]:
        """Guards that run: on by default for learned models, off per card (``[guards]``)."""
        return active_guards(self.task, self.guards, self.learned)

    @property
    def degradation_name(self) -> str | None:
        """``[degradation] name`` (or ``kind``): what the model undoes, what the consistency
        guard keeps."""
        return degradation_name(self.degradation)

    @property
    def normalisation_spec(self) -> NormalisationSpec:
        return parse_normalisation(self.normalisation)[0]


def default_zoo_dir() -> Path:
    """``$DICOMNODE_MODELS``, or ``dicomnode/models``: package data in a wheel, a link to the
    repository's ``models/`` folder in a checkout."""
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
    normalisation = raw.get("normalisation", {})
    degradation = raw.get("degradation", {})
    for key, table in (("normalisation", normalisation), ("degradation", degradation)):
        if not isinstance(table, dict):
            problems.append(f"{key}: expected a table")
    if isinstance(normalisation, dict):
        problems += parse_normalisation(normalisation)[1]
    if task in TASKS:
        problems += setting_problems(task, guards)
    precisions = _precisions(raw.get("inference", {}), problems)
    review = raw.get("review", {})
    if not isinstance(review, dict) or not _valid_review(review):
        problems.append("review: expected waived_regions (a list of region names) and a "
                        "non-empty reason")
        review = {}
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
        guards=dict(guards), weights_sha256=sha, folder=folder, precisions=precisions,
        review=dict(review),
        cross_scanner_metrics=dict(raw.get("cross_scanner_metrics", {})),
    )


def _valid_review(review: Mapping[str, Any]) -> bool:
    """An empty review, or waived region names with the reason they are acceptable."""
    if not review:
        return True
    waived, reason = review.get("waived_regions"), review.get("reason")
    return (set(review) <= {"waived_regions", "reason"} and isinstance(waived, list)
            and all(isinstance(w, str) for w in waived) and isinstance(reason, str)
            and bool(reason.strip()))


def _precisions(table: object, problems: list[str]) -> tuple[str, ...]:
    """``[inference] precisions`` (default fp32 only), appending problems with their key path."""
    if not isinstance(table, dict):
        problems.append("inference: expected a table")
        return ("fp32",)
    problems += [f"inference.{k}: unknown key (known: {', '.join(_INFERENCE_KEYS)})"
                 for k in table if k not in _INFERENCE_KEYS]
    value = table.get("precisions", ["fp32"])
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v in PRECISIONS for v in value)):
        problems.append(f"inference.precisions: expected a list of {', '.join(PRECISIONS)} "
                        f"(those the model was validated in), got {value!r}")
        return ("fp32",)
    return tuple(dict.fromkeys(value))


def run_problems(card: ModelCard) -> list[str]:
    """What a card lacks to be run (not just listed): each problem with its key path.

    Kept apart from :func:`parse_card` so that ``dicomnode models`` still lists such a card;
    :func:`dicomnode.engine.load` and :func:`verify_weights` (``check-config``) refuse it.
    """
    problems = requirement_problems(card.active_guards, card.degradation)
    if card.learned and "method" not in card.normalisation:
        problems.append("normalisation.method: required for a learned model: \"hu\" (CT), "
                        "\"percentile\" (MR, radiographs) or \"none\"")
    return problems


def check_runnable(card: ModelCard) -> None:
    """Raise ModelError listing :func:`run_problems`, if any."""
    problems = run_problems(card)
    if problems:
        raise ModelError(f"{card.folder / CARD_FILE}: cannot run model {card.name!r}: "
                         + "; ".join(problems))


def verify_weights(card: ModelCard) -> Path:
    """The weights file, after checking it exists and its sha256 matches the card, and that
    the card holds what running the model needs (:func:`run_problems`)."""
    path = card.weights_path
    if not path.is_file():
        raise ModelError(f"model {card.name!r}: weights file {path} is missing")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    _check_digest(card, digest.hexdigest())
    check_runnable(card)
    return path


def read_weights(card: ModelCard) -> bytes:
    """The weights file's bytes, checked against the card's sha256.

    Read once and checked in memory, so the bytes that are loaded are the bytes that were
    checked (no window for the file to change in between).
    """
    path = card.weights_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"model {card.name!r}: weights file {path} is missing") from None
    except OSError as exc:
        raise ModelError(f"model {card.name!r}: cannot read {path}: {exc}") from None
    _check_digest(card, hashlib.sha256(data).hexdigest())
    return data


def _check_digest(card: ModelCard, found: str) -> None:
    if found != card.weights_sha256:
        raise ModelError(
            f"model {card.name!r}: {card.weights_path} has sha256 {found}, the card says "
            f"{card.weights_sha256}; the file was changed or damaged: re-export the model"
        )


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(
        c in "0123456789abcdef" for c in value
    )
