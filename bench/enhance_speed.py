"""``dicomnode enhance`` on one 512x512 CT series: non-local means against the learned CT
denoiser under each runtime (``auto``, ``torch``, ``onnxruntime``), in one run.

Issue 16 asks for ``ct-denoise`` at least 3x faster than ``nlm-denoise`` on 2 cores; this prints
both times and their ratio. Each configuration is a fresh ``dicomnode enhance`` process (as an
administrator runs it) on the same series, written by ``bench/make_instances.py`` from the head
CT in tests/data. Two times per row: ``process`` (wall clock of the whole command: Python and
torch start-up, model load with the runtime measurement of ``auto``) and ``enhance`` (what the
command reports: scanning, inference, writing). The runtime each process used comes from its
``model_loaded`` log line. Numbers are printed, never written into the docs by the script.

Usage (2 cores, a quiet machine)::

    nice -n 15 .venv/bin/python bench/enhance_speed.py --slices 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGURATIONS = (("nlm-denoise", "torch"), ("ct-denoise", "auto"), ("ct-denoise", "torch"),
                  ("ct-denoise", "onnxruntime"))
_REPORTED = re.compile(r"(\d+) image\(s\) derived.*?, ([0-9.]+) s ->")


def run_enhance(series: Path, out: Path, model: str, runtime: str) -> dict[str, object]:
    """One ``dicomnode enhance`` process; its wall time, reported time, runtime and load line."""
    command = [sys.executable, "-m", "dicomnode.cli", "enhance", str(series), str(out),
               "--model", model, "--device", "cpu", "--runtime", runtime, "--no-progress",
               "--log-json"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    match = _REPORTED.search(result.stdout)
    if match is None:
        raise SystemExit(f"no time in the output of {' '.join(command)}:\n{result.stdout}")
    row: dict[str, object] = {"model": model, "requested": runtime, "process_s": wall,
                              "images": int(match[1]), "enhance_s": float(match[2]),
                              "runtime": "-", "measured": ""}
    for line in result.stderr.splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("event") == "model_loaded":
            row["runtime"] = entry.get("runtime", "-")
        elif entry.get("event") == "runtime_chosen":
            keys = ("torch_ms", "onnxruntime_ms", "speedup", "difference", "reason")
            row["measured"] = ", ".join(f"{k} {entry[k]}" for k in keys if k in entry)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=20, help="512x512 CT slices (default 20)")
    parser.add_argument("--keep", type=Path, help="write the series and outputs here (kept)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="enhance-speed-") as scratch:
        root = args.keep or Path(scratch)
        series = root / "series"
        subprocess.run([sys.executable, str(REPO / "bench" / "make_instances.py"), str(series),
                        "--count", str(args.slices)], check=True, capture_output=True)
        load = os.getloadavg()
        started = time.perf_counter()
        rows = [run_enhance(series, root / f"out-{model}-{runtime}", model, runtime)
                for model, runtime in CONFIGURATIONS]
        elapsed = time.perf_counter() - started
    print(f"dicomnode enhance on {args.slices} x 512x512 CT slices, device cpu, "
          f"{os.cpu_count()} CPU(s); load average {load[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after; {elapsed:.0f} s in all")
    print()
    print("| model | --runtime | runtime used | images | enhance s | process s | "
          "nlm-denoise / this (enhance) | at load |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- |")
    baseline = rows[0]["enhance_s"]
    for row in rows:
        ratio = float(baseline) / max(float(row["enhance_s"]), 1e-9)  # type: ignore[arg-type]
        print(f"| `{row['model']}` | {row['requested']} | {row['runtime']} | {row['images']} | "
              f"{row['enhance_s']:.2f} | {row['process_s']:.2f} | {ratio:.2f}x | "
              f"{row['measured']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
