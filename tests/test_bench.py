"""Benchmark scripts run and print what they measure (small inputs: seconds)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import CT_TILT_DIR, MR_DIR
from training.data import SeriesData, load_series
from training.evaluate import load_model

ROOT = Path(__file__).resolve().parent.parent


def test_bench_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "inference.py"), "--families", "conv_autoencoder",
         "--sizes", "32", "--precisions", "fp32", "--threads", "1", "--no-cuda",
         "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = out.read_text(encoding="utf-8")
    assert "## Machine" in report and "matrix-multiply peak" in report
    assert "| `conv_autoencoder` | x1 | 32x32 | cpu | fp32 |" in report


def _guard_bound_module():
    spec = importlib.util.spec_from_file_location("guard_bound", ROOT / "bench" / "guard_bound.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_slices(series: SeriesData, count: int) -> SeriesData:
    return dataclasses.replace(series, slices=series.slices[:count], _percentiles={})


def test_guard_bound_shows_the_room_the_intensity_guard_leaves_an_mr_denoiser() -> None:
    """Rician noise raises the floor of the scanner-masked background; the guard keeps it, so
    even the reference itself, guarded, falls short of a perfect score, yet above NLM."""
    bound = _guard_bound_module()
    model = load_model("mr-denoise", ROOT / "models")
    series = _first_slices(load_series([MR_DIR])[0], 3)
    scores = bound.bound_and_baselines(model, series, 0.07)
    perfect = scores["perfect, guarded"]
    assert math.isfinite(perfect["psnr"]) and perfect["ssim"] < 1.0
    assert perfect["psnr"] > scores["nl_means"]["psnr"]


def test_guard_bound_leaves_a_ct_reference_as_it_is() -> None:
    """CT noise has no floor to keep: the guard does not change the reference (nor, with the
    node's padding fill, the ring next to the padding)."""
    bound = _guard_bound_module()
    model = load_model("ct-denoise", ROOT / "models")
    series = _first_slices(load_series([CT_TILT_DIR])[0], 1)
    assert series.padding is not None
    scores = bound.bound_and_baselines(model, series, 0.1)
    assert scores["perfect, guarded"]["psnr"] == math.inf
    assert scores["nl_means"]["psnr"] < math.inf


def test_pareto_scores_match_evaluate_and_every_candidate_is_timed(tmp_path: Path) -> None:
    """bench/pareto.py gives a candidate the PSNR `dicomnode-train evaluate` gives it on the same
    slices (same seeded degradation), and a measured ms/slice for each candidate."""
    from training.data import evenly_spaced
    from training.evaluate import evaluate

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pareto.py"), "--data", str(MR_DIR),
         "--max-slices", "2", "--time-slices", "1", "--rounds", "1", "--threads", "1",
         "mr-denoise:fp32", "mr-denoise:bf16"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in result.stdout.splitlines() if line.startswith("| mr-denoise")
            or line.startswith("| nl_means")}
    assert set(rows) == {"mr-denoise:fp32", "mr-denoise:bf16", "nl_means"}
    assert float(rows["mr-denoise:fp32"][1]) > 0 and float(rows["mr-denoise:bf16"][1]) > 0
    model = load_model("mr-denoise", ROOT / "models")
    series = [evenly_spaced(s, 2) for s in load_series([MR_DIR])]
    expected = evaluate(model, series)
    for column, level in zip((2, 4), sorted(expected["levels"], key=float), strict=True):
        psnr = float(rows["mr-denoise:fp32"][column].split("/")[0])
        assert psnr == round(expected["levels"][level]["mean"]["model"]["psnr"], 2)
