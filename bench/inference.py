"""Inference speed of every network family on this machine, written to docs/BENCHMARKS.md.

For each generator family (default parameters; super-resolution at x2, the scale of the shipped
``mr-sr-x2``) and each input size: milliseconds per slice through ``dicomnode.inference.infer``
(the node's real path: padding, tiling, host copies; median of repeated runs after a warm-up
run), GMAC per slice (``dicomnode.nets.flops.count_macs``), and the achieved GFLOP/s as a
fraction of this machine's measured matrix-multiply peak in the same precision.

    PYTHONPATH=. python bench/inference.py [--threads 2] [--sizes 256 512]
        [--precisions fp32 bf16] [--max-run-s 45] [--out docs/BENCHMARKS.md]

The run is kept to about five minutes on two cores: a configuration whose predicted single run
(from the same family's throughput at the smaller size, or from its fp32 time times the median
slow-down of the reduced precision observed so far) exceeds its cap is skipped and marked so;
slow configurations are timed once. Numbers on a shared machine are
noisy; the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dicomnode.devices import cpu_has_amx, supported_precisions
from dicomnode.inference import infer
from dicomnode.nets import build_network, list_architectures
from dicomnode.nets.flops import count_macs

SR_SCALE = 2
SINGLE_RUN_S = 15.0  # a configuration slower than this is timed once (no separate warm-up)
CONFIG_BUDGET_S = 5.0  # timed repeats of a fast configuration stop after about this long
MAX_REPEATS = 5
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Row:
    family: str
    scale: int
    size: int
    device: str
    precision: str
    gmac: float
    ms: float | None = None
    runs: int = 0
    note: str = ""

    def gflops(self) -> float | None:
        return None if self.ms is None else 2 * self.gmac / (self.ms / 1000)


def timed(function: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def matmul_peak(device: torch.device, precision: str) -> float:
    """GFLOP/s of a square matrix product, grown until one takes 0.1 s (median of three).

    The size adapts because emulated bf16 on CPUs without AVX512-BF16/AMX is hundreds of
    times slower than fp32: a fixed 2048x2048 product would take minutes there.
    """
    dtype = DTYPES[precision]
    size = 256
    while True:
        a = torch.rand(size, size, device=device).to(dtype)
        b = torch.rand(size, size, device=device).to(dtype)
        first = timed(lambda a=a, b=b: a @ b, device)
        if first >= 0.1 or size >= 4096:
            break
        size *= 2
    times = [timed(lambda: a @ b, device) for _ in range(3)]
    return 2 * size**3 / statistics.median(times) / 1e9


def conv_slowdown(device: torch.device, precision: str) -> float:
    """How many times slower convolutions run in ``precision`` than in fp32 (a small probe)."""
    torch.manual_seed(0)
    network = build_network("dncnn", {"depth": 5, "num_features": 32}).eval()
    image = np.random.default_rng(0).random((1, 128, 128), dtype=np.float32)
    times = {}
    for p in ("fp32", precision):
        infer(image, network, device=device, precision=p)
        times[p] = timed(lambda p=p: infer(image, network, device=device, precision=p), device)
    return times[precision] / times["fp32"]


def families() -> list[tuple[str, dict[str, object], int]]:
    """(name, parameters, scale) of every generator family at its defaults."""
    result = []
    for info in list_architectures():
        if info.role == "discriminator":
            continue  # used in training only
        if "scale" in info.default_params():
            result.append((info.name, {"scale": SR_SCALE}, SR_SCALE))
        else:
            result.append((info.name, {}, 1))
    return result


def measure(row: Row, network: torch.nn.Module, device: torch.device) -> None:
    image = np.random.default_rng(0).random((1, row.size, row.size), dtype=np.float32)

    def run() -> object:
        return infer(image, network, device=device, precision=row.precision,
                     tile=max(row.size, 512), batch_size=1)

    first = timed(run, device)
    if first >= SINGLE_RUN_S:
        row.ms, row.runs, row.note = first * 1000, 1, "single run"
        return
    repeats = max(1, min(MAX_REPEATS, int(CONFIG_BUDGET_S / max(first, 1e-3))))
    times = [timed(run, device) for _ in range(repeats)]
    row.ms, row.runs = statistics.median(times) * 1000, repeats


def machine_lines(threads: int, device: torch.device) -> list[str]:
    model, cores = platform.processor() or "unknown", os.cpu_count()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        per_core = fields.get("Thread(s) per core", "?").strip()
        cores_line = f"{fields.get('CPU(s)', cores).strip()} logical CPU(s), {per_core} thread(s) "\
                     "per core"
        flags = fields.get("Flags", "")
    except (OSError, subprocess.SubprocessError):
        cores_line, flags = f"{cores} logical CPU(s)", ""
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags.split()]
    lines = [
        f"- CPU: {model}, {cores_line}; SIMD: {', '.join(simd) or 'unknown'}; "
        f"AMX: {'yes' if cpu_has_amx() else 'no'} (torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()})",
        f"- torch {torch.__version__}, {threads} intra-op thread(s) "
        f"(torch.get_num_threads() = {torch.get_num_threads()}); "
        f"Python {platform.python_version()}",
    ]
    if device.type == "cuda":
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    return lines


def table(rows: list[Row], peaks: dict[tuple[str, str], float]) -> list[str]:
    lines = [
        "| family | scale | input | device | precision | GMAC/slice | ms/slice (median, runs) "
        "| GFLOP/s | % of matmul peak | note |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        flops = r.gflops()
        peak = peaks.get((r.device, r.precision))
        ms = f"{r.ms:.0f} ({r.runs})" if r.ms is not None else "-"
        achieved = f"{flops:.1f}" if flops is not None else "-"
        fraction = f"{100 * flops / peak:.0f} %" if flops is not None and peak else "-"
        lines.append(f"| `{r.family}` | x{r.scale} | {r.size}x{r.size} | {r.device} | "
                     f"{r.precision} | {r.gmac:.1f} | {ms} | {achieved} | {fraction} | {r.note} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"],
                        choices=list(DTYPES))
    parser.add_argument("--families", nargs="+", default=None, help="default: every generator")
    parser.add_argument("--max-run-s", type=float, default=45.0,
                        help="skip an fp32 configuration predicted to take longer per run")
    parser.add_argument("--max-reduced-run-s", type=float, default=25.0,
                        help="the same for bf16/fp16 (emulated, slow, on CPUs without AMX)")
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    cpu_started = time.process_time()
    load_before = os.getloadavg()
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    chosen = [f for f in families() if args.families is None or f[0] in args.families]

    peaks: dict[tuple[str, str], float] = {}
    rows: list[Row] = []
    for device in devices:
        precisions = [p for p in args.precisions if p in supported_precisions(device)]
        if device.type == "cuda":
            precisions = [p for p in ("fp32", "fp16", "bf16") if p in supported_precisions(device)]
        for precision in precisions:
            peaks[(device.type, precision)] = matmul_peak(device, precision)
            print(f"matmul peak {device.type} {precision}: "
                  f"{peaks[(device.type, precision)]:.1f} GFLOP/s", flush=True)
        throughput: dict[tuple[str, str], float] = {}  # (family, precision) -> GMAC/s measured
        for precision in precisions:
            cap = args.max_run_s if precision == "fp32" else args.max_reduced_run_s
            slowdowns = [1.0]  # reduced precision time / fp32 time, probe then each family
            if precision != "fp32" and device.type == "cpu":
                slowdowns = [conv_slowdown(device, precision)]
                print(f"{precision} convolutions are {slowdowns[0]:.1f}x slower than fp32 in a "
                      "small probe", flush=True)
            for size in sorted(args.sizes):
                for name, params, scale in chosen:
                    with torch.device("meta"):
                        meta = build_network(name, params)
                    gmac = count_macs(meta, (1, 1, size, size)) / 1e9
                    row = Row(name, scale, size, device.type, precision, gmac)
                    rows.append(row)
                    rate = throughput.get((name, precision))
                    fp32_rate = throughput.get((name, "fp32"))
                    if rate is None and fp32_rate:
                        rate = fp32_rate / statistics.median(slowdowns)
                    predicted = gmac / rate if rate else None
                    if device.type == "cpu" and predicted is not None and predicted > cap:
                        row.note = f"skipped: predicted {predicted:.0f} s per run"
                        print(f"{name} {size} {precision}: {row.note}", flush=True)
                        continue
                    torch.manual_seed(0)
                    network = build_network(name, params).eval()
                    measure(row, network, device)
                    throughput[(name, precision)] = gmac / (row.ms / 1000)
                    if precision != "fp32" and fp32_rate:
                        slowdowns.append(fp32_rate / throughput[(name, precision)])
                    print(f"{name:<17} x{scale} {size:>4} {device.type} {precision}: "
                          f"{row.ms:9.0f} ms ({row.runs} run(s)), {gmac:6.1f} GMAC", flush=True)
    for device in devices:  # again at the end: the best of both is the peak (less contention)
        for (kind, precision), value in list(peaks.items()):
            if kind == device.type:
                peaks[(kind, precision)] = max(value, matmul_peak(device, precision))
    elapsed = time.perf_counter() - started
    cores_used = (time.process_time() - cpu_started) / elapsed
    load_after = os.getloadavg()
    lines = table(rows, peaks)
    print("\n".join(lines))
    write_report(args, rows, peaks, lines, devices[-1], elapsed, (load_before, load_after),
                 cores_used)
    return 0


def write_report(args: argparse.Namespace, rows: list[Row], peaks: dict[tuple[str, str], float],
                 lines: list[str], device: torch.device, elapsed: float,
                 loads: tuple[tuple[float, ...], tuple[float, ...]], cores_used: float) -> None:
    today = datetime.date.today().isoformat()
    peak_text = "; ".join(f"{d} {p}: {v:.3g} GFLOP/s" for (d, p), v in peaks.items())
    fast = [r for r in rows if r.size == 512 and r.ms is not None and r.ms <= 100]
    verdict = (", ".join(f"`{r.family}` {r.precision} ({r.ms:.0f} ms)" for r in fast)
               if fast else "none of the default-size families")
    measured = [r for r in rows if r.precision == "fp32" and r.size == max(args.sizes)
                and r.gflops() is not None]
    best = max((r.gflops() or 0.0 for r in measured), default=0.0)
    budget = best * 0.1 / 2  # GMAC in 100 ms at the best throughput reached
    slow = sorted({r.family for r in measured if (r.gflops() or 0) < 0.25 * best})
    text = "\n".join([
        "# Inference benchmarks",
        "",
        f"Generated by `python bench/inference.py` on {today} in {elapsed / 60:.1f} min "
        f"(arguments: `{' '.join(sys.argv[1:]) or 'defaults'}`). Re-run it on the deployment "
        "machine: these numbers describe this one only.",
        "",
        "## Machine",
        "",
        *machine_lines(args.threads, device),
        f"- measured matrix-multiply peak (square products, median of 3, the better of the "
        f"start and the end of the run): {peak_text}",
        f"- contention: load average (1, 5, 15 min) {', '.join(f'{v:.2f}' for v in loads[0])} "
        f"before and {', '.join(f'{v:.2f}' for v in loads[1])} after; this process got "
        f"{cores_used:.2f} CPU core(s) on average for its {args.threads} thread(s). The cores "
        "are shared with other work, so the times are noisy (up to a factor of two between "
        "runs here); compare orders of magnitude, not close values. A fraction of peak above "
        "100 % means the peak was measured at a busier moment than the row.",
        "",
        "## Method",
        "",
        "- Every generator family at its **default** parameters (docs/ARCHITECTURES.md), one "
        f"input channel, super-resolution families at x{SR_SCALE}; random weights (the models "
        "are not trained yet, so this is speed only, no quality).",
        "- One slice per call through `dicomnode.inference.infer` (padding to the pad multiple, "
        "host copies, channels_last, `torch.inference_mode`, autocast for bf16/fp16), batch 1, "
        "no tiling (tile = max(size, 512)). ms/slice is the median of up to 5 timed runs after "
        f"one warm-up run; a configuration slower than {SINGLE_RUN_S:.0f} s is timed once "
        "(runs = 1, its first run). Configurations predicted to exceed "
        f"{args.max_run_s:.0f} s (fp32) or {args.max_reduced_run_s:.0f} s (bf16/fp16) per run "
        "are skipped and marked, to keep the whole run to a few minutes.",
        "- GMAC counts Conv2d/ConvTranspose2d/Linear multiply-accumulates "
        "(`dicomnode.nets.flops.count_macs`); GFLOP/s = 2 x GMAC / time; % of matmul peak "
        "compares that with a large matrix product in the same precision on the same device.",
        "- For super-resolution the input is the low-resolution slice: a 256x256 input at x2 "
        "gives a 512x512 output.",
        "",
        "## Results",
        "",
        *lines,
        "",
        "## Reading",
        "",
        f"- 512x512 input in <= 100 ms per slice on this machine: {verdict}. The target in the "
        "issue (the fastest family within 0.3 dB of the best, once trained, at <= 100 ms for a "
        f"512x512 slice on 2 cores) allows about {budget:.1f} GMAC per slice at the best fp32 "
        f"throughput reached here ({best:.0f} GFLOP/s): far smaller widths/depths than the "
        "defaults, or a GPU. Which size keeps the quality is for training to decide; the "
        "families' parameters reach such sizes (e.g. RLFN with fewer features and blocks).",
        f"- MACs are not time: {', '.join(f'`{f}`' for f in slow) or 'no family'} ran below a "
        "quarter of the best throughput (element-wise, depth-wise and normalisation work that "
        "MAC counts leave out).",
        "- bf16 on a CPU without AMX or AVX512-BF16 is emulated and several times slower than "
        "fp32 (matrix products far more so, hence a bf16 'peak' that convolutions exceed): "
        "`precision = \"auto\"` runs fp32 on such CPUs (`dicomnode.devices`).",
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_replace_section(args.out, text), encoding="utf-8")
    print(f"wrote {args.out}")


START, END = "<!-- bench/inference.py: start -->", "<!-- bench/inference.py: end -->"


def _replace_section(path: Path, text: str) -> str:
    """This script owns only its marked section; other benchmarks' sections stay."""
    block = f"{START}\n{text.rstrip()}\n{END}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if START in old and END in old:
        return old[: old.index(START)] + block + old[old.index(END) + len(END) + 1:]
    return (old.rstrip() + "\n\n" + block) if old.strip() else block


if __name__ == "__main__":
    sys.exit(main())
