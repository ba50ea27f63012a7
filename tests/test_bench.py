"""Benchmark scripts run and print what they measure (small inputs: seconds)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def _sr_headroom_module():
    spec = importlib.util.spec_from_file_location("sr_headroom", ROOT / "bench" / "sr_headroom.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_sr_headroom_measures_a_white_rician_floor_and_bounds_the_gain() -> None:
    """A smooth disc with complex white noise (sigma 20) taken to magnitude: the bench finds
    sigma and the noise's 3/4 share of the discarded band, and zero-filling's error exceeds the
    noise it cannot predict; a masked (zero) background gives no ceiling."""
    bench = _sr_headroom_module()
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:256, :256]
    disc = np.where((yy - 128) ** 2 + (xx - 128) ** 2 < 70 ** 2, 3000.0, 0.0)
    disc += 900.0 * np.sin(xx / 3.0) * (disc > 0)  # fine detail zero-filling loses
    noise = rng.normal(0, 20.0, (4, 256, 256)) + 1j * rng.normal(0, 20.0, (4, 256, 256))
    noisy = np.abs(disc + noise)
    h = bench.headroom(noisy)
    assert h.floor_patches == 16 and h.zero_share == 0.0
    assert abs(h.sigma - 20.0) < 1.0
    assert abs(h.noise_band_share - 0.75) < 0.03
    assert h.zero_filled_mse > h.noise_in_band and h.ceiling_db > 0
    assert abs(h.band_energy - h.zero_filled_mse) < 0.2 * h.zero_filled_mse
    masked = np.where(disc > 0, noisy, 0.0)
    assert bench.headroom(masked).ceiling_db is None


def test_sr_headroom_prints_a_row_per_series() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sr_headroom.py"), str(MR_DIR), "--max-slices", "4"],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith(f"| {MR_DIR.name}")]
    assert len(rows) == 1 and rows[0].split("|")[2].strip() == "4"
