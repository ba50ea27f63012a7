"""``dicomnode-train export CHECKPOINT --name NAME``: write ``models/NAME/`` for the node.

The card says what the model does and how it was made: architecture and parameters, input
normalisation, the degradation it was trained for, the training data and their licences, the
validation metrics against every baseline (from the run's final evaluation on its
patient-disjoint validation split, or an ``evaluate --json`` file), the safety guard that
applies, and the sha256 of the safetensors weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from dicomnode.engine.cards import CARD_FILE, WEIGHTS_FILE, load_card
from training.checkpoint import EVAL, HISTORY, ZOO_PREFIX, make_setup, read_checkpoint
from training.config import REPO_ROOT, parse_config
from training.tasks import normalisation_card

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def export(
    checkpoint: str | Path,
    name: str,
    models_dir: str | Path | None = None,
    metrics_json: str | Path | None = None,
    version: str | None = None,
) -> Path:
    """Write card and weights; returns the model folder. The card is checked by re-reading it."""
    checkpoint = Path(checkpoint)
    weights, meta = read_checkpoint(checkpoint)
    run_dir = checkpoint if checkpoint.is_dir() else checkpoint.parent
    config = parse_config(json.loads(meta["config"]), source=str(checkpoint))
    setup = make_setup(config)
    network = setup.build_generator()
    network.load_state_dict(weights)  # refuses weights that do not fit the architecture

    eval_path = Path(metrics_json) if metrics_json else run_dir / EVAL
    evaluation = json.loads(eval_path.read_text()) if eval_path.is_file() else None
    history_path = run_dir / HISTORY
    history = json.loads(history_path.read_text()) if history_path.is_file() else {}

    folder = Path(models_dir or REPO_ROOT / "models") / name
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = folder / WEIGHTS_FILE
    tmp = weights_path.with_name(WEIGHTS_FILE + ".tmp")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp),
              {"format": "pt"})  # one key: safetensors orders metadata at random
    os.replace(tmp, weights_path)
    sha = hashlib.sha256(weights_path.read_bytes()).hexdigest()

    params = setup.architecture_params()
    if setup.task.task == "denoise":
        params.pop("scale", None)
    card: dict[str, Any] = {
        "name": name,
        "version": version or config.version,
        "task": setup.task.task,
        "scale": setup.scale,
        "modalities": list(config.modalities),
        "description": config.description or f"{config.architecture['name']} "
                                              f"{setup.task.task}",
        "architecture": {"name": config.architecture["name"], **params},
        "normalisation": normalisation_card(setup.norm),
        "degradation": setup.task.card(),
        "training": _training_table(config, meta, history),
        "metrics": _metrics_table(evaluation, eval_path),
        "guards": ({"intensity": True} if setup.task.task == "denoise"
                   else {"consistency": True}),
        "weights": {"sha256": sha, "file": WEIGHTS_FILE,
                    "parameters": int(sum(v.numel() for k, v in weights.items()
                                          if "running_" not in k and "num_batches" not in k)),
                    "bytes": weights_path.stat().st_size},
    }
    _write_card(folder, "numbers from its validation run", card)
    return folder


def _write_card(folder: Path, provenance: str, card: Mapping[str, Any]) -> Path:
    """Write ``model.toml`` atomically and read it back as the node would."""
    text = f"# Written by dicomnode-train export; {provenance}.\n" + dumps_toml(card)
    tmp = folder / (CARD_FILE + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, folder / CARD_FILE)
    load_card(folder.name, folder.parent)  # the node must accept what we wrote
    return folder / CARD_FILE


def update_card_metrics(name: str, evaluation: Mapping[str, Any], source: Path,
                        models_dir: str | Path | None = None, *,
                        cross_scanner: bool = False) -> Path:
    """Replace a zoo card's ``[metrics]`` (or ``[cross_scanner_metrics]``) with an evaluation.

    For when the evaluation itself changed (it now runs the node's guards), or to add the
    cross-scanner numbers; everything else on the card, the weights and their sha256 stay as
    they are.
    """
    import tomllib

    folder = Path(models_dir or REPO_ROOT / "models") / name
    path = folder / CARD_FILE
    card = tomllib.loads(path.read_text(encoding="utf-8"))
    table = "cross_scanner_metrics" if cross_scanner else "metrics"
    card[table] = _metrics_table(evaluation, source, cross_scanner=cross_scanner)
    if "cross_scanner_metrics" in card:  # keep it last, after [metrics], as a reader expects
        card["cross_scanner_metrics"] = card.pop("cross_scanner_metrics")
    return _write_card(folder, f"[{table}] re-measured by dicomnode-train evaluate "
                               "--update-card", card)


def _relative(path: str) -> str:
    try:
        return os.path.relpath(path, REPO_ROOT)
    except ValueError:
        return path


def _training_table(config: Any, meta: Mapping[str, str], history: Mapping[str, Any]
                    ) -> dict[str, Any]:
    data = config.data
    table: dict[str, Any] = {
        "data": [_relative(str(p)) for p in config.folders("train")],
        "validation": [_relative(str(p)) for p in config.folders("val")]
        or f"patient-wise split of the training folders, fraction {data['val_fraction']}",
        "split": "by patient (PatientID), then series: no patient on both sides",
        "licences": list(data.get("licences", [])) or ["see SOURCE.md of each data folder"],
        "iterations": int(meta.get("iteration", 0)),
        "seconds": round(float(history.get("seconds", 0.0)), 1),
        "seed": config.seed,
        "patch_size": data["patch_size"],
        "batch_size": data["batch_size"],
        "losses": {k: config.loss[k] for k in ("l1", "mse", "ssim", "adversarial", "perceptual")
                   if config.loss[k]},
        "optimizer": config.optimizer["name"],
        "learning_rate": config.optimizer["lr"],
        "schedule": config.schedule["name"],
        "amp": config.train["amp"],
    }
    if config.train.get("init_from"):
        # a zoo start names the card version it had (zoo:NAME moves on), a run folder its path
        source = str(history.get("initialised_from") or config.train["init_from"])
        table["fine_tuned_from"] = source if source.startswith(ZOO_PREFIX) else _relative(source)
        table["note"] = ("iterations and seconds are this stage's; the run it was fine-tuned "
                         "from trained before it")
    return table


def _metrics_table(evaluation: Mapping[str, Any] | None, source: Path,
                   cross_scanner: bool = False) -> dict[str, Any]:
    if evaluation is None:
        return {"note": "not evaluated: run dicomnode-train evaluate and export with --metrics"}
    split = ("series from scanner models absent from the training data (cross-scanner)"
             if cross_scanner else "the patient-disjoint validation split")
    table: dict[str, Any] = {
        "source": f"dicomnode-train evaluate (SPEC section 8) on {split}",
        "series": evaluation["series"],
        "slices": evaluation["slices"],
        "beats_all_baselines": bool(evaluation["beats_all_baselines"]),
    }
    if evaluation.get("max_slices"):
        table["max_slices"] = int(evaluation["max_slices"])
    if "regions_ok" in evaluation:
        table["regions_ok"] = bool(evaluation["regions_ok"])
        table["region_margin"] = evaluation["region_margin"]
    if evaluation.get("validation_data"):
        table["validation_data"] = [_relative(p) for p in evaluation["validation_data"]]
    for level, block in evaluation["levels"].items():
        entry: dict[str, Any] = {
            name: {key: round(value, 4 if key == "ssim" else 3) for key, value in m.items()}
            for name, m in block["mean"].items()}
        entry["beats"] = dict(block["beats"])
        entry["gain_psnr_db"] = {k: round(v["psnr_db"], 3) for k, v in block["gain"].items()}
        if all("psnr_foreground_db" in v for v in block["gain"].values()):
            entry["gain_psnr_foreground_db"] = {k: round(v["psnr_foreground_db"], 3)
                                                for k, v in block["gain"].items()}
        if "region_rms" in block:
            entry.update(_region_entries(block))
        table[f"{evaluation['degradation']['level']}_{level}"] = entry
    return table


def _region_entries(block: Mapping[str, Any]) -> dict[str, Any]:
    """RMS error per region of the model and the best baseline, and the regions that failed."""
    best = block["best_baseline"]
    regions = list(block["region_rms"])

    def column(name: str) -> list[float]:
        values = (block["region_rms"][r].get(name) for r in regions)
        return [round(v, 3) if v is not None else float("nan") for v in values]

    return {
        "region_rms": {"regions": regions, "model": column("model"), best: column(best)},
        "worse_regions": [f"{w['region']}: model {w['model_rms']:.3f} vs {best} "
                          f"{w['baseline_rms']:.3f} RMS" for w in block["worse_regions"]],
    }


# --- a small TOML writer (tables, arrays, strings, numbers, booleans) -------------------------

def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _flat(value: Any) -> bool:
    return isinstance(value, Mapping) and not any(isinstance(v, Mapping) for v in value.values())


def dumps_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """TOML text for nested mappings: scalars first, then one [table] per mapping.

    Inside a table, a small mapping of scalars is written inline (``model = { psnr = ... }``)
    when it fits on a readable line; a longer one (per-region lists) gets its own table.
    """
    def inline(v: Any) -> bool:
        return bool(prefix) and _flat(v) and len(v) <= 4 and len(_value(v)) <= 100

    lines = [f"{_key(k)} = {_value(v)}" for k, v in data.items()
             if not isinstance(v, Mapping) or inline(v)]
    text = "\n".join(lines) + ("\n" if lines else "")
    for k, v in data.items():
        if isinstance(v, Mapping) and not inline(v):
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            scalars = {a: b for a, b in v.items() if not isinstance(b, Mapping)}
            nested = {a: b for a, b in v.items() if isinstance(b, Mapping)}
            text += f"\n[{name}]\n" + dumps_toml(scalars)
            if nested:
                text += dumps_toml(nested, name)
    return text
