# Sourced by bench/gpu_check.sh and bench/gpu_train.sh: the CUDA check and the dependencies of a
# GPU machine that has only torch, numpy, scipy, scikit-image and safetensors.
#
# The other dependencies come from wheels prepared beforehand on a machine with network access,
# into the git-ignored folder gpu_wheels/ (`bash bench/gpu_check.sh --download-wheels [3.11]`),
# and are installed with --no-index into $OUT/site-packages (nothing system-wide). SimpleITK
# (training's NIfTI reader) and pynetdicom (the network side) are not needed: training on a GPU
# reads packed data (`dicomnode-train pack`).
#
# Expects ROOT, PYTHON, OUT; defines step(); exits 3 without a CUDA device, 2 without wheels.

WHEELS=$ROOT/gpu_wheels
# Exactly what the CUDA tests, the benches, `enhance` and training import beyond the five.
PACKAGES=(pydicom highdicom pillow pyjpegls typing-extensions packaging pylibjpeg
          pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle tqdm pytest pluggy iniconfig
          pygments)

if [[ "${1:-}" == "--download-wheels" ]]; then
    version=${2:-$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
    mkdir -p "$WHEELS"
    "$PYTHON" -m pip download --dest "$WHEELS" --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --python-version "$version" "${PACKAGES[@]}"
    echo "wheels for Python $version in $WHEELS ($(du -sh "$WHEELS" | cut -f1))"
    exit 0
fi

START=$SECONDS
step() { echo; echo "== $1 (at $((SECONDS - START)) s)"; }

step "CUDA device"
if ! "$PYTHON" - <<'PYEOF'
import sys
try:
    import torch
except ImportError:
    sys.exit("torch is not importable with this Python: set PYTHON=/path/to/python")
if not torch.cuda.is_available():
    sys.exit(f"no CUDA device: torch {torch.__version__} (built for CUDA "
             f"{torch.version.cuda or 'none'}) sees none; nothing to check on this machine")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}")
PYEOF
then
    echo "$(basename "$0"): no CUDA device here; the CUDA path stays untested" >&2
    exit 3
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader || true

step "dependencies"
SITE=$OUT/site-packages
mkdir -p "$OUT"
if ! "$PYTHON" -c 'import pydicom, highdicom, pytest, tqdm' 2>/dev/null; then
    if [[ ! -d "$WHEELS" ]]; then
        echo "$(basename "$0"): missing pydicom/highdicom/pytest and no $WHEELS: run" \
             "'bash bench/gpu_check.sh --download-wheels' on a machine with network access" >&2
        exit 2
    fi
    "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" \
        --target "$SITE" "${PACKAGES[@]}"
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
