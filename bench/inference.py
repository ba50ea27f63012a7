"""Inference speed on this machine: shipped models and network families, fp32 and bf16, torch
eager, ``torch.compile`` and ONNX Runtime, in one run; written to docs/BENCHMARKS.md.

Every configuration runs through ``dicomnode.engine.inference.infer``, the node's own path (mirrored
rim, padding, tiles, host copies, channels_last, autocast for bf16/fp16), on one slice per call
(``--batch-sizes`` on a GPU): a compiled module or an ONNX Runtime session takes the network's
place in it. Rows: milliseconds per slice (median of repeated runs after warm-up), GMAC per
slice (``dicomnode.nets.flops.count_macs``), GFLOP/s as a fraction of this machine's measured
matrix-multiply peak, and how far the output is from torch eager fp32 on the same input (max
absolute difference over the reference's range). A runtime is worth adopting in the node only
at >= 1.5x the speed of eager fp32 with outputs within 1e-3 of the range (the Reading section
says which, if any).

    PYTHONPATH=. python bench/inference.py [--threads 2] [--sizes 512]
        [--precisions fp32 bf16] [--runtimes eager compile onnx] [--models ...]
        [--families ...] [--device cpu|cuda] [--batch-sizes 1 8 64] [--tag NAME]
        [--out docs/BENCHMARKS.md]

``--sizes`` are output sizes: a x2 super-resolution network gets half as many input pixels
(a 256x256 slice for a 512x512 output, as ``mr-sr-x2`` gets an MR slice). Shipped models run
their own weights on a real CT slice (``tests/data``, normalised to [0, 1] by its 0.5/99.5
percentiles); families run random weights on the same slice. Shipped models with the same
network (architecture and parameters) are timed once. ``torch.compile`` and ONNX Runtime are
tried on the shipped models and the ``--runtime-families`` (default: ffdnet); configurations
predicted to run longer than the caps are skipped and marked. Numbers on a shared machine are
noisy; the load average before and after is recorded.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dicomnode.engine.devices import cpu_has_amx, supported_precisions
from dicomnode.engine.inference import infer
from dicomnode.nets import build_network, image_border, list_architectures
from dicomnode.nets.flops import count_macs

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "ct_ge_hispeed_head_tilt_6sl"
SR_SCALE = 2
SINGLE_RUN_S = 15.0  # a configuration slower than this is timed once (no separate warm-up)
CONFIG_BUDGET_S = 5.0  # timed repeats of a fast configuration stop after about this long
MAX_REPEATS = 5
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RUNTIMES = ("eager", "compile", "onnx")
ADOPT_SPEEDUP, ADOPT_DIFF = 1.5, 1e-3


@dataclass
class Subject:
    """A network to time: a shipped model (its weights) or a family (random weights)."""

    label: str
    architecture: str
    params: dict[str, object]
    scale: int
    runtimes: tuple[str, ...]
    weights: Path | None = None

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        network = build_network(self.architecture, self.params)
        if self.weights is not None:
            from safetensors.torch import load_file

            network.load_state_dict(load_file(str(self.weights)))
        return network.eval()


@dataclass
class Row:
    family: str
    scale: int
    size: int
    device: str
    precision: str
    gmac: float
    runtime: str = "eager"
    batch: int = 1
    ms: float | None = None
    runs: int = 0
    diff: float | None = None
    note: str = ""
    extra: dict[str, float] = field(default_factory=dict)

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


def shipped_subjects(names: list[str] | None) -> list[Subject]:
    """Every shipped learned model (or those named), one subject per distinct network."""
    from dicomnode.engine.cards import list_cards

    cards, _ = list_cards()
    groups: dict[tuple[str, str], list] = {}
    for card in cards:
        if card.learned and (names is None or card.name in names):
            key = (card.architecture, repr(sorted(dict(card.parameters).items())))
            groups.setdefault(key, []).append(card)
    result = []
    for cards_ in groups.values():
        card = cards_[0]
        label = " = ".join(f"`{c.name}`" for c in cards_)
        result.append(Subject(label, card.architecture, dict(card.parameters), card.scale,
                              RUNTIMES, card.weights_path))
    return result


def family_subjects(names: list[str] | None, runtime_families: list[str]) -> list[Subject]:
    """Every generator family at its defaults (super-resolution at x2), or those named."""
    result = []
    for info in list_architectures():
        if info.role == "discriminator" or (names is not None and info.name not in names):
            continue  # discriminators are used in training only
        sr = "scale" in info.default_params()
        params: dict[str, object] = {"scale": SR_SCALE} if sr else {}
        runtimes = RUNTIMES if info.name in runtime_families else ("eager",)
        result.append(Subject(f"`{info.name}`", info.name, params, SR_SCALE if sr else 1,
                              runtimes))
    return result


def sample_image(size: int, channels: int, count: int = 1) -> np.ndarray:
    """(count, C, size, size): a real CT slice in [0, 1] (its centre, or mirrored to size);
    random values where tests/data is absent."""
    try:
        import pydicom

        from dicomnode.pixels import modality_values

        values = modality_values(pydicom.dcmread(sorted(SAMPLE.glob("*.dcm"))[0]))
        low, high = np.percentile(values, (0.5, 99.5))
        image = np.clip((values - low) / max(high - low, 1e-6), 0, 1).astype(np.float32)
    except (ImportError, IndexError, OSError):
        image = np.random.default_rng(0).random((size, size), dtype=np.float32)
    if min(image.shape) < size:
        image = np.pad(image, [(0, max(0, size - n)) for n in image.shape], mode="symmetric")
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    image = image[top:top + size, left:left + size]
    return np.ascontiguousarray(np.broadcast_to(image, (count, channels, size, size)))


class OrtNetwork(nn.Module):
    """An ONNX Runtime session in the network's place (same attributes ``infer`` reads)."""

    def __init__(self, network: nn.Module, example: torch.Tensor, threads: int) -> None:
        import onnxruntime

        super().__init__()
        for name in ("in_channels", "out_channels", "scale", "pad_multiple"):
            if hasattr(network, name):
                setattr(self, name, getattr(network, name))
        buffer = io.BytesIO()
        axes = {0: "n", 2: "h", 3: "w"}
        torch.onnx.export(network, (example,), buffer, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes, "y": axes}, dynamo=False, opset_version=17)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        self.session = onnxruntime.InferenceSession(buffer.getvalue(), options,
                                                    providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"x": array})[0])


def runtime_network(runtime: str, network: nn.Module, example: torch.Tensor, threads: int
                    ) -> nn.Module:
    if runtime == "compile":
        torch._dynamo.reset()  # a fresh cache per network: no recompilation limit across rows
        return torch.compile(network, dynamic=False)
    if runtime == "onnx":
        return OrtNetwork(network, example, threads)
    return network


def measure(row: Row, network: nn.Module, device: torch.device, image: np.ndarray,
            border: int) -> np.ndarray:
    """Time ``infer`` on ``image`` as ``row`` says; returns the output of the last run."""
    result: list[np.ndarray] = []

    def run() -> None:
        result[:] = [infer(image, network, device=device, precision=row.precision,
                           tile=max(row.size, 512), batch_size=row.batch, border=border)]

    first = timed(run, device)
    if row.runtime == "compile":
        row.extra["compile_s"] = first
        first = timed(run, device)
    if first >= SINGLE_RUN_S:
        row.ms, row.runs = first * 1000 / row.batch, 1
        row.note = (row.note + "; single run").lstrip("; ")
        return result[0]
    repeats = max(1, min(MAX_REPEATS, int(CONFIG_BUDGET_S / max(first, 1e-3))))
    times = [timed(run, device) for _ in range(repeats)]
    row.ms, row.runs = statistics.median(times) * 1000 / row.batch, repeats
    return result[0]


def macs(subject: Subject, shape: tuple[int, ...]) -> float:
    """Multiply-accumulates of one pass, on the meta device where the network allows it (a
    network that sets autocast itself, as ffdnet does, runs on the CPU instead)."""
    try:
        with torch.device("meta"):
            meta = build_network(subject.architecture, subject.params)
        return count_macs(meta, shape)
    except RuntimeError:
        return count_macs(build_network(subject.architecture, subject.params), shape)


def run_subject(subject: Subject, device: torch.device, size: int, precisions: list[str],
                runtimes: list[str], batches: list[int], caps: tuple[float, float],
                threads: int, slowdown: float) -> list[Row]:
    """Every precision x runtime x batch of one subject; outputs compared with eager fp32."""
    input_size = size // subject.scale
    network = subject.build()
    channels = int(getattr(network, "in_channels", 1))
    gmac = macs(subject, (1, channels, input_size, input_size)) / 1e9
    border = image_border(network)
    rows: list[Row] = []
    reference: np.ndarray | None = None
    rate: float | None = None  # GMAC/s of eager fp32, to predict the rest
    for runtime in [r for r in runtimes if r in subject.runtimes]:
        for precision in precisions:
            for batch in batches:
                row = Row(subject.label, subject.scale, input_size, device.type, precision,
                          gmac, runtime, batch)
                rows.append(row)
                if runtime == "onnx" and precision != "fp32":
                    row.note = "not run: the exported graph is fp32"
                    continue
                cap = caps[0] if precision == "fp32" else caps[1]
                factor = 1.0 if precision == "fp32" else slowdown
                predicted = gmac * factor / rate if rate else None
                if device.type == "cpu" and predicted is not None and predicted > cap:
                    row.note = f"skipped: predicted {predicted:.0f} s per run"
                    print(f"{subject.label} {precision} {runtime}: {row.note}", flush=True)
                    continue
                image = sample_image(input_size, channels, batch)
                example = torch.from_numpy(image[:1]).to(device)
                try:
                    model = runtime_network(runtime, network, example, threads)
                    output = measure(row, model, device, image, border)
                except Exception as exc:  # a runtime that cannot take this network: say why
                    row.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
                    print(f"{subject.label} {precision} {runtime}: {row.note}", flush=True)
                    continue
                if reference is None and runtime == "eager" and precision == "fp32":
                    reference = output
                    rate = gmac / (row.ms / 1000) if row.ms else None
                elif reference is not None:
                    span = float(reference.max() - reference.min()) or 1.0
                    row.diff = float(np.abs(output - reference).max()) / span
                compiled = row.extra.get("compile_s")
                if compiled is not None:
                    row.note = (f"compile {compiled:.0f} s; " + row.note).rstrip("; ")
                print(f"{subject.label} x{subject.scale} {input_size} {device.type} {precision} "
                      f"{runtime} batch {batch}: {row.ms:8.1f} ms/slice ({row.runs} run(s)), "
                      f"diff {row.diff if row.diff is not None else 0:.2e} {row.note}",
                      flush=True)
    return rows


def table(rows: list[Row], peaks: dict[tuple[str, str], float]) -> list[str]:
    lines = [
        "| model / family | scale | input | device | precision | runtime | batch | GMAC/slice "
        "| ms/slice (median, runs) | slices/s | GFLOP/s | % of matmul peak "
        "| max abs diff / range vs eager fp32 | note |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- |",
    ]
    for r in rows:
        flops = r.gflops()
        peak = peaks.get((r.device, r.precision))
        ms = f"{r.ms:.1f} ({r.runs})" if r.ms is not None else "-"
        rate = f"{1000 / r.ms:.1f}" if r.ms else "-"
        achieved = f"{flops:.1f}" if flops is not None else "-"
        fraction = f"{100 * flops / peak:.0f} %" if flops is not None and peak else "-"
        diff = ("reference" if r.ms is not None and r.diff is None and r.runtime == "eager"
                and r.precision == "fp32" else f"{r.diff:.1e}" if r.diff is not None else "-")
        lines.append(f"| {r.family} | x{r.scale} | {r.size}x{r.size} | {r.device} | "
                     f"{r.precision} | {r.runtime} | {r.batch} | {r.gmac:.1f} | {ms} | {rate} | "
                     f"{achieved} | {fraction} | {diff} | {r.note} |")
    return lines


def verdicts(rows: list[Row]) -> list[str]:
    """Per subject: the fastest configuration against eager fp32, and whether to adopt it."""
    lines = []
    for label in dict.fromkeys(r.family for r in rows):
        mine = [r for r in rows if r.family == label and r.ms is not None and r.batch == 1]
        base = next((r for r in mine if r.runtime == "eager" and r.precision == "fp32"), None)
        if base is None or base.ms is None:
            continue
        parts = []
        for r in mine:
            if r is base:
                continue
            speedup = base.ms / r.ms if r.ms else 0.0
            ok = (r.runtime != "eager" and speedup >= ADOPT_SPEEDUP and r.diff is not None
                  and r.diff <= ADOPT_DIFF)  # bf16 is the card's question, not a runtime's
            parts.append(f"{r.runtime} {r.precision} {speedup:.2f}x"
                         f"{f' (diff {r.diff:.1e})' if r.diff is not None else ''}"
                         f"{' **meets the bar**' if ok else ''}")
        lines.append(f"  - {label} (eager fp32 {base.ms:.0f} ms): " + ("; ".join(parts) or
                                                                     "nothing else measured"))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512])
    parser.add_argument("--precisions", nargs="+", default=None, choices=list(DTYPES),
                        help="default: fp32 bf16 on a CPU, fp32 fp16 bf16 on a GPU")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--models", nargs="*", default=None,
                        help="shipped models (no names: every learned one)")
    parser.add_argument("--families", nargs="*", default=None,
                        help="network families (no names: every generator)")
    parser.add_argument("--runtime-families", nargs="*", default=["ffdnet"],
                        help="families that get compile/onnx too (shipped models always do)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--no-cuda", action="store_true", help="the same as --device cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1],
                        help="slices per forward pass (a CPU pass holds at most 256x256 pixels "
                             "in the node, so batches are for GPUs)")
    parser.add_argument("--max-run-s", type=float, default=45.0,
                        help="skip an fp32 configuration predicted to take longer per run")
    parser.add_argument("--max-reduced-run-s", type=float, default=25.0,
                        help="the same for bf16/fp16")
    parser.add_argument("--tag", default="", help="a second section of the report (e.g. 1 "
                                                  "thread) instead of replacing the first")
    parser.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device("cpu" if args.no_cuda else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench/inference.py: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 1
    precisions = args.precisions or (["fp32", "bf16"] if device.type == "cpu" else
                                     ["fp32", "fp16", "bf16"])
    precisions = [p for p in precisions if p in supported_precisions(device)]
    runtimes = args.runtimes if device.type == "cpu" else [r for r in args.runtimes
                                                           if r != "onnx"]
    started, cpu_started, load_before = time.perf_counter(), time.process_time(), os.getloadavg()
    peaks: dict[tuple[str, str], float] = {}
    for precision in precisions:
        peaks[(device.type, precision)] = matmul_peak(device, precision)
        print(f"matmul peak {device.type} {precision}: "
              f"{peaks[(device.type, precision)]:.1f} GFLOP/s", flush=True)
    slowdown = 1.0
    if device.type == "cpu" and "bf16" in precisions:
        slowdown = conv_slowdown(device, "bf16")
        print(f"bf16 convolutions take {slowdown:.2f}x the fp32 time in a small probe",
              flush=True)
    # neither named: both; --models / --families alone (with or without names): only that kind
    subjects = []
    if args.models is not None or args.families is None:
        subjects += shipped_subjects(args.models or None)
    if args.families is not None or args.models is None:
        subjects += family_subjects(args.families or None, args.runtime_families)
    rows: list[Row] = []
    for size in sorted(args.sizes):
        for subject in subjects:
            rows += run_subject(subject, device, size, precisions, runtimes, args.batch_sizes,
                                (args.max_run_s, args.max_reduced_run_s), args.threads,
                                slowdown)
    for precision in precisions:  # again at the end: the best of both is the peak
        peaks[(device.type, precision)] = max(peaks[(device.type, precision)],
                                              matmul_peak(device, precision))
    elapsed = time.perf_counter() - started
    cores_used = (time.process_time() - cpu_started) / elapsed
    lines = table(rows, peaks)
    print("\n".join(lines))
    print("\n".join(verdicts(rows)))
    write_report(args, rows, peaks, lines, device, elapsed, (load_before, os.getloadavg()),
                 cores_used)
    return 0


def write_report(args: argparse.Namespace, rows: list[Row], peaks: dict[tuple[str, str], float],
                 lines: list[str], device: torch.device, elapsed: float,
                 loads: tuple[tuple[float, ...], tuple[float, ...]], cores_used: float) -> None:
    today = datetime.date.today().isoformat()
    peak_text = "; ".join(f"{d} {p}: {v:.3g} GFLOP/s" for (d, p), v in peaks.items())
    fast = [r for r in rows if r.size * r.scale == 512 and r.ms is not None and r.ms <= 100]
    fast_text = (", ".join(f"{r.family} {r.precision} {r.runtime} ({r.ms:.0f} ms)"
                           for r in fast) or "none")
    title = f"## Inference speed{f' ({args.tag})' if args.tag else ''}"
    text = "\n".join([
        title,
        "",
        f"Generated by `python bench/inference.py` on {today} in {elapsed / 60:.1f} min "
        f"(arguments: `{' '.join(sys.argv[1:]) or 'defaults'}`). Re-run it on the deployment "
        "machine: these numbers describe this one only.",
        "",
        "### Machine",
        "",
        *machine_lines(args.threads, device),
        f"- measured matrix-multiply peak (square products, median of 3, the better of the "
        f"start and the end of the run): {peak_text}",
        f"- contention: load average (1, 5, 15 min) {', '.join(f'{v:.2f}' for v in loads[0])} "
        f"before and {', '.join(f'{v:.2f}' for v in loads[1])} after; this process got "
        f"{cores_used:.2f} CPU core(s) on average for its {args.threads} thread(s). Shared "
        "cores make the times noisy and inflated; compare rows of one run, not close values.",
        "",
        "### Method",
        "",
        "- Every row runs `dicomnode.engine.inference.infer`, the node's path (mirrored rim, "
        "padding, one tile up to 512 pixels plus the rim, host copies, channels_last, autocast for "
        "bf16/fp16); `compile` is `torch.compile(network)` (inductor, compile time in the "
        "note, not in the time), `onnx` an ONNX Runtime CPU session of the network exported "
        "with `torch.onnx.export` (opset 17), fp32 only.",
        "- Input: the centre of a real CT slice (tests/data) in [0, 1]; x2 super-resolution "
        "networks get half the size (a 256x256 input for a 512x512 output). Shipped models "
        "run their own weights, families random ones at their default parameters; shipped "
        "models with one network are one row.",
        f"- ms/slice: median of up to {MAX_REPEATS} timed runs after a warm-up run; a "
        f"configuration slower than {SINGLE_RUN_S:.0f} s is timed once; configurations "
        f"predicted to exceed {args.max_run_s:.0f} s (fp32) or {args.max_reduced_run_s:.0f} s "
        "(reduced) per run are skipped. The last column compares the output with eager fp32 "
        "on the same input: max |difference| / (max - min of the eager fp32 output).",
        "",
        "### Results",
        "",
        *lines,
        "",
        "### Reading",
        "",
        f"- 512x512 output slices in <= 100 ms: {fast_text}.",
        f"- Adopt a runtime only at >= {ADOPT_SPEEDUP}x eager fp32 with outputs within "
        f"{ADOPT_DIFF:g} of the range; per network (batch 1; families have random weights, so "
        "their differences say little about trained ones):",
        *verdicts(rows),
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_replace_section(args.out, text, args.tag), encoding="utf-8")
    print(f"wrote {args.out}")


def _markers(tag: str) -> tuple[str, str]:
    name = f"bench/inference.py{f' {tag}' if tag else ''}"
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def _replace_section(path: Path, text: str, tag: str = "") -> str:
    """This script owns only its marked section(s); other benchmarks' sections stay."""
    start, end = _markers(tag)
    block = f"{start}\n{text.rstrip()}\n{end}\n"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if start in old and end in old:
        return old[: old.index(start)] + block + old[old.index(end) + len(end) + 1:]
    return (old.rstrip() + "\n\n" + block) if old.strip() else block


if __name__ == "__main__":
    sys.exit(main())
