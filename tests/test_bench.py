"""The inference benchmark runs and writes its report (one small family, one size: seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
