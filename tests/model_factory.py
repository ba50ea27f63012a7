"""Write tiny learned models (card + random safetensors weights) into a test's zoo folder.

No committed weights are needed: each test builds the network it names, saves its random
weights with safetensors and writes a card with their sha256, as ``dicomnode-train export``
will.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dicomnode.nets import build_network

TINY_RLFN = {"num_features": 8, "num_blocks": 1, "esa_channels": 4}
TINY_DNCNN = {"depth": 3, "num_features": 8}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _table(name: str, values: dict[str, Any]) -> str:
    lines = [f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def write_model(
    zoo: Path,
    name: str,
    architecture: str,
    params: dict[str, Any],
    task: str = "super-resolution",
    scale: int = 2,
    modalities: tuple[str, ...] = ("MR",),
    normalisation: dict[str, Any] | None = None,
    degradation: dict[str, Any] | None = None,
    guards: dict[str, bool] | None = None,
    inference: dict[str, Any] | None = None,
    seed: int = 0,
    sha256: str | None = None,
    card_params: dict[str, Any] | None = None,
) -> Path:
    """Write ``zoo/name/`` with a card and random weights; return the folder.

    ``card_params`` (default ``params``) are the architecture parameters the card states, to
    write a card that does not match its weights.
    """
    folder = zoo / name
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    network = build_network(architecture, params)
    weights = folder / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
    digest = sha256 or hashlib.sha256(weights.read_bytes()).hexdigest()
    card = [
        f'name = "{name}"', 'version = "0.0.1"', f'task = "{task}"', f"scale = {scale}",
        f"modalities = {_toml_value(list(modalities))}", 'description = "tiny test model"', "",
        _table("architecture", {"name": architecture, **(card_params or params)}),
        _table("normalisation", normalisation or {"method": "percentile", "low": 0.5,
                                                  "high": 99.5}),
        _table("degradation", degradation or ({"name": "kspace"} if task != "denoise" else
                                              {"name": "rician"})),
        _table("training", {"data": "none: random weights for tests"}),
        _table("metrics", {"note": "untrained"}),
        _table("weights", {"sha256": digest}),
    ]
    if guards is not None:
        card.append(_table("guards", guards))
    if inference is not None:
        card.append(_table("inference", inference))
    (folder / "model.toml").write_text("\n".join(card), encoding="utf-8")
    return folder


def replace_weights(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Write other tensors as the weights and put their sha256 on the card (a consistent pair)."""
    weights = folder / "weights.safetensors"
    old = hashlib.sha256(weights.read_bytes()).hexdigest()
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    new = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = folder / "model.toml"
    card.write_text(card.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
