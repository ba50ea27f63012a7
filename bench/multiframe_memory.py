"""Peak memory of one large Enhanced CT through the node's enhance path, against its pixel size.

Builds an Enhanced CT of ``--frames`` 512x512 frames from the real CT slices of tests/data
(``tests/multiframe_factory.py``, in a separate process so its copies never count), then, in a
fresh process: loads the model, warms it up on two frames, resets the kernel's peak-RSS mark
(``/proc/self/clear_refs`` = 5), reads VmRSS as the baseline, runs ``enhance.enhance_series``
(what ``dicomnode enhance`` and the worker run) with a sink that writes the derived object
through ``files.write_dataset``, and reads VmHWM. Prints the peak beyond the baseline as a
multiple of the object's pixel size (frames x 512 x 512 x 2 bytes).

    .venv/bin/python bench/multiframe_memory.py [--frames 500] [--model ct-denoise]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SLICES = REPO / "tests" / "data" / "ct_ge_hispeed_head_tilt_6sl"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build(frames: int, out: Path) -> None:
    from tests.multiframe_factory import enhanced_ct

    ds = enhanced_ct(sorted(SLICES.glob("*.dcm")), frames, shuffle=True, name="bench")
    ds.save_as(out, enforce_file_format=True)


def measure(path: Path, model: str, batch_size: int, out_dir: Path) -> dict:
    import numpy as np

    from dicomnode.engine import load as load_model
    from dicomnode.enhance import derivation_for, enhance_series
    from dicomnode.files import write_dataset
    from dicomnode.multiframe import read_multiframe
    from dicomnode.series import scan_files

    enhancer = load_model(model, batch_size=batch_size)
    source = read_multiframe(path)
    warm = np.stack([source.modality_values(f) for f in source.frames[:2]])
    context = enhancer.context
    run = enhancer.for_series(list(warm))
    run(np.concatenate([warm[:1]] * context + [warm] + [warm[-1:]] * context))
    del source, warm, run
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    baseline = _status_kib("VmRSS")
    series = scan_files([path]).series[0]
    derivation = derivation_for(enhancer.card, "bench", " [dicomnode bench]")
    written: list[Path] = []

    def sink(ds):  # type: ignore[no-untyped-def]
        target = write_dataset(ds, out_dir / f"{ds.SOPInstanceUID}.dcm")
        written.append(target)
        return target

    started = time.perf_counter()
    outcome = enhance_series(series, enhancer, derivation, sink, batch_size=batch_size)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    if not outcome.written:
        raise SystemExit(f"nothing derived: {outcome.rejected or outcome.skipped_reason}")
    return {"baseline_kib": baseline, "peak_kib": peak, "seconds": seconds,
            "written_bytes": written[0].stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--model", default="ct-denoise")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        build(args.frames, args.build)
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure, args.model, args.batch_size, args.out)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "enhanced_ct.dcm"
        me = [sys.executable, str(Path(__file__).resolve())]
        subprocess.run([*me, "--frames", str(args.frames), "--build", str(source)], check=True)
        (work / "out").mkdir()
        result = subprocess.run(
            [*me, "--model", args.model, "--batch-size", str(args.batch_size), "--measure",
             str(source), "--out", str(work / "out")],
            check=True, capture_output=True, text=True)
        numbers = json.loads(result.stdout.strip().splitlines()[-1])
    pixels = args.frames * 512 * 512 * 2
    extra = (numbers["peak_kib"] - numbers["baseline_kib"]) * 1024
    mib = 2**20
    print(f"Enhanced CT {args.frames} x 512 x 512 x 16 bit through {args.model} "
          f"(batch {args.batch_size}): pixels {pixels / mib:.0f} MiB, "
          f"derived file {numbers['written_bytes'] / mib:.0f} MiB")
    print(f"baseline RSS (model loaded and warm) {numbers['baseline_kib'] / 1024:.0f} MiB, "
          f"peak RSS {numbers['peak_kib'] / 1024:.0f} MiB, beyond baseline "
          f"{extra / mib:.0f} MiB = {extra / pixels:.2f} x the pixel size; "
          f"{numbers['seconds']:.0f} s ({numbers['seconds'] / args.frames:.2f} s/frame)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
