#!/usr/bin/env bash
# The CUDA path, checked in one go (at most 8 minutes) on a machine with a CUDA GPU:
#   1. the CUDA tests (pytest -m gpu, in the test files that carry the marker),
#   2. bench/inference.py for every shipped model on the GPU: slices/s at 512x512 output,
#      fp32 / fp16 / bf16, batch sizes 1-64, through the node's own inference path,
#      and the network alone (no host copies or tile blending) for the ceiling,
#   3. `dicomnode enhance --device cuda` with ct-denoise on a CT series (6 slices from
#      tests/data and 96 copies of them), pixels compared with the CPU's,
# then prints a table for docs/BENCHMARKS.md. Without a CUDA device it says so and exits 3
# before installing anything.
#
# It runs from a fresh checkout where the Python has only torch, numpy, scipy, scikit-image
# and safetensors: the other dependencies come from wheels prepared beforehand on a machine
# with network access, into the git-ignored folder gpu_wheels/:
#
#   bash bench/gpu_check.sh --download-wheels [PYTHON_VERSION]   # e.g. 3.11 (default: this one)
#
# and are installed with --no-index into a private folder (nothing system-wide). SimpleITK
# (training's NIfTI reader) and pynetdicom (the network side) are not needed here.
#
#   bash bench/gpu_check.sh            # PYTHON=python3, OUT=./gpu_check_out by default
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$ROOT/gpu_check_out}
# shellcheck source=bench/gpu_env.sh
source "$ROOT/bench/gpu_env.sh" "$@"   # CUDA check, wheels, step()
status=0

step "CUDA tests (pytest -m gpu)"
mapfile -t GPU_TESTS < <(grep -rl --include='*.py' 'mark.gpu' tests | sort)
# pytest's exit status: 0 only if every selected test passed (5: none was selected)
if ! timeout 90 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu "${GPU_TESTS[@]}" \
        2>&1 | tee "$OUT/pytest.txt" | tail -15; then
    status=1
fi

step "inference bench, every shipped model, 512x512 output, batch 1-64"
if ! timeout 180 "$PYTHON" bench/inference.py --device cuda --models --runtimes eager \
        --precisions fp32 fp16 bf16 --batch-sizes 1 8 32 64 --sizes 512 --tag gpu \
        --out "$OUT/BENCHMARKS_gpu.md" > "$OUT/bench.txt" 2>&1; then
    echo "bench/inference.py failed or ran out of time:"; tail -20 "$OUT/bench.txt"; status=1
fi

step "network alone (no host copies, no tile blending): the ceiling"
timeout 60 "$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/network.txt" || status=1
import time
import torch
from dicomnode.engine.learned import build_model
from dicomnode.engine.cards import load_card

print("| model | precision | batch | slices/s (network alone, 512x512 output) |")
print("| --- | --- | ---: | ---: |")
for name in ("ct-denoise", "mr-sr-x2"):
    card = load_card(name)
    network = build_model(card).cuda().to(memory_format=torch.channels_last)
    size = 512 // card.scale + 16 * (card.scale == 1)  # the 8-px mirrored rim of a denoiser
    for dtype, label in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        for batch in (1, 8, 32, 64):
            x = torch.rand(batch, 1, size, size, device="cuda").contiguous(
                memory_format=torch.channels_last)
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
                for _ in range(3):
                    network(x)
                torch.cuda.synchronize()
                start, runs = time.perf_counter(), 10
                for _ in range(runs):
                    network(x)
                torch.cuda.synchronize()
            rate = batch * runs / (time.perf_counter() - start)
            print(f"| `{name}` | {label} | {batch} | {rate:.0f} |")
EOF

step "dicomnode enhance --device cuda (ct-denoise), CPU for comparison"
timeout 120 "$PYTHON" - "$OUT" <<'EOF' 2>&1 | tee "$OUT/enhance.txt" || status=1
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom

out = Path(sys.argv[1]) / "enhance"
shutil.rmtree(out, ignore_errors=True)
small = Path("tests/data/ct_ge_hispeed_head_tilt_6sl")
large = out / "ct96"
subprocess.run([sys.executable, "bench/make_instances.py", str(large), "--count", "96"],
               check=True, capture_output=True)
cli = "import sys; from dicomnode.cli import main; sys.exit(main())"


def enhance(source: Path, device: str) -> tuple[float, Path]:
    target = out / f"{source.name}_{device}"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", cli, "enhance", str(source), str(target), "--model",
                    "ct-denoise", "--device", device, "--no-progress"], check=True)
    return time.perf_counter() - start, target


def pixels(folder: Path) -> np.ndarray:
    files = sorted(folder.rglob("*.dcm"), key=lambda p: pydicom.dcmread(p).InstanceNumber)
    return np.stack([pydicom.dcmread(p).pixel_array.astype(np.float64) for p in files])


rows = []
for source, count in ((small, 6), (large, 96)):
    seconds, gpu = enhance(source, "cuda")
    rows.append((source.name, count, "cuda", seconds, ""))
    if count == 6:
        cpu_seconds, cpu = enhance(source, "cpu")
        a, b = pixels(gpu), pixels(cpu)
        note = f"max |cuda - cpu| = {np.abs(a - b).max():.0f} stored units"
        rows.append((source.name, count, "cpu", cpu_seconds, note))
print("| series | slices | device | wall s (whole command, start-up included) | slices/s | note |")
print("| --- | ---: | --- | ---: | ---: | --- |")
for name, count, device, seconds, note in rows:
    print(f"| {name} | {count} | {device} | {seconds:.1f} | {count / seconds:.1f} | {note} |")
EOF

step "results"
echo "### CUDA tests"; tail -3 "$OUT/pytest.txt"
echo; echo "### bench/inference.py --device cuda"
sed -n '/^| model \/ family/,/^$/p' "$OUT/BENCHMARKS_gpu.md" 2>/dev/null || tail -20 "$OUT/bench.txt"
echo; echo "### network alone"; grep '^|' "$OUT/network.txt" || true
echo; echo "### enhance"; grep '^|' "$OUT/enhance.txt" || true
echo; echo "gpu_check: $((SECONDS - START)) s, status $status (0: every step passed)"
exit $status
