#!/usr/bin/env bash
# A shipped model's GPU profile (training/configs/NAME-gpu.toml) trained and evaluated in one go
# on a machine with a CUDA GPU, from data packed here beforehand into gpu_data/NAME/
# (the pack command is at the top of each profile):
#
#   bash bench/gpu_train.sh NAME [NAME ...]     # e.g. ct-denoise; OUT=./gpu_train_out by default
#
# For each NAME: the profile's training (its time_limit_minutes; CT noise simulated first by
# prefill_workers processes), then `evaluate` of the run on each validation folder of the
# profile, on the GPU (--json per folder). The run folder (weights, history, curves) and the
# results land in $OUT/NAME/; back here: `dicomnode-train export OUT/NAME/run --name NAME
# --version V`, then `evaluate --update-card` as for any export.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$ROOT/gpu_train_out}
if [[ $# -lt 1 ]]; then
    echo "usage: bash bench/gpu_train.sh NAME [NAME ...]  (profiles: $(ls training/configs/*-gpu.toml \
        | xargs -n1 basename | sed 's/-gpu.toml//' | tr '\n' ' '))" >&2
    exit 2
fi
for name in "$@"; do
    [[ -f training/configs/$name-gpu.toml ]] || { echo "no profile training/configs/$name-gpu.toml" >&2; exit 2; }
    [[ -f gpu_data/$name/PACK.json ]] || { echo "no packed data gpu_data/$name/: run the pack" \
        "command at the top of training/configs/$name-gpu.toml where the data is" >&2; exit 2; }
done
# shellcheck source=bench/gpu_env.sh
source "$ROOT/bench/gpu_env.sh"

status=0
for name in "$@"; do
    config=training/configs/$name-gpu.toml
    run=$("$PYTHON" -c "from training.config import load_config; print(load_config('$config').out_dir)")
    mkdir -p "$OUT/$name"
    step "$name: train ($config)"
    if ! "$PYTHON" -m training.cli train "$config" --no-progress 2>&1 | tee "$OUT/$name/train.txt" \
            | grep -v "skipped file=" | tail -5; then
        status=1; continue
    fi
    mapfile -t folders < <("$PYTHON" -c "
from training.config import load_config
for f in load_config('$config').folders('val'):
    print(f)")
    for folder in "${folders[@]}"; do
        label=$(basename "$folder")
        step "$name: evaluate on $label"
        "$PYTHON" -m training.cli evaluate --model "$run" --data "$folder" --device cuda \
            --threads 8 --json "$OUT/$name/eval-$label.json" 2>&1 \
            | grep -v "skipped file=" | tee "$OUT/$name/eval-$label.txt" | tail -12 || status=1
    done
    mkdir -p "$OUT/$name/run"
    cp "$run"/checkpoint.safetensors "$run"/history.json "$OUT/$name/run/"
    cp "$run"/curves.png "$OUT/$name/run/" 2>/dev/null || true
done
echo; echo "gpu_train: $((SECONDS - START)) s, status $status (0: every step passed)"
exit $status
