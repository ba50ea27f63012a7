"""Which runtime computes a learned network's forward passes on a CPU: torch or ONNX Runtime.

ONNX Runtime ran the shipped NAFNet 1.67x faster than torch eager on 2 cores, with outputs within
3.3e-6 of the range (docs/BENCHMARKS.md); but the gain depends on the network, the CPU and its
load, and RLFN's FFT does not export at all. So ``runtime = "auto"`` exports the loaded network
once, times both on one tile of the size the node runs, and adopts ONNX Runtime only when it is
:data:`MIN_SPEEDUP` times faster and its output is within :data:`TOLERANCE` of the range of
torch's fp32 output. Every input shape is checked against torch once more at its first pass
(the export traces Python-side shape arithmetic at one size). Whatever goes wrong on the ONNX
side (export, session, a later run) leaves torch in charge with a log line naming why: the
faster path never fails a job. GPU devices keep torch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from dicomnode.engine.choices import RUNTIME_CHOICES
from dicomnode.engine.devices import PROBE_BUDGET_S, time_precisions
from dicomnode.engine.inference import DEFAULT_TILE, infer
from dicomnode.errors import DeviceError
from dicomnode.logs import event

log = logging.getLogger(__name__)

MIN_SPEEDUP = 1.5  # below it, not worth a second runtime's rounding and failure modes
TOLERANCE = 1e-3  # max |onnx - torch fp32| / (max - min of torch's output)
OPSET = 17
PROBE_REPEATS = 3
_ATTRIBUTES = ("in_channels", "out_channels", "scale", "pad_multiple", "needs_whole_image")
_DECISIONS: dict[Hashable, str] = {}  # (architecture, parameters, weights, threads, ...) -> runtime
_EXPORTING = threading.Lock()  # one export at a time: it redirects the process's stdout


class OnnxNetwork(nn.Module):
    """An ONNX Runtime session in a torch network's place: :func:`infer` calls it for every pass
    and reads the same attributes. The torch network stays inside as the reference for each new
    input shape and as the fall back after any ONNX error (logged once, then torch for good)."""

    def __init__(self, network: nn.Module, session: object, name: str = "",
                 tolerance: float = TOLERANCE) -> None:
        super().__init__()
        self.network = network
        for attribute in _ATTRIBUTES:
            if hasattr(network, attribute):
                setattr(self, attribute, getattr(network, attribute))
        self.session = session
        self.label = name or type(network).__name__
        self.tolerance = tolerance
        self.differences: dict[tuple[int, ...], float] = {}  # checked shape -> difference
        self.failure: str | None = None
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failure is None:
            try:
                output = torch.from_numpy(self.session.run(  # type: ignore[attr-defined]
                    None, {"x": x.float().contiguous().cpu().numpy()})[0])
            except Exception as exc:  # ORT's errors derive from Exception only
                self.give_up(f"session run failed: {describe(exc)}")
            else:
                shape = tuple(x.shape)
                if shape in self.differences:
                    return output
                reference = self.network(x).float()
                difference = relative_difference(reference.numpy(), output.numpy())
                with self._lock:
                    self.differences[shape] = difference
                if difference <= self.tolerance:
                    return output
                self.give_up(f"output differs from torch's by {difference:.1e} of the range at "
                             f"input shape {list(shape)} (tolerance {self.tolerance:g})")
                return reference
        return self.network(x)

    def give_up(self, reason: str) -> None:
        """Run torch from now on, with one warning naming why."""
        with self._lock:
            if self.failure is not None:
                return
            self.failure = reason
        event(log, "runtime_fallback", logging.WARNING, network=self.label, runtime="torch",
              reason=reason)


def export_onnx(network: nn.Module, example: torch.Tensor, threads: int,
                name: str = "") -> OnnxNetwork:
    """``network`` exported with ``torch.onnx.export`` (fixed opset, batch and H/W dynamic) into
    an ONNX Runtime CPU session with ``threads`` intra-op threads (torch's count)."""
    import onnxruntime

    buffer = io.BytesIO()
    axes = {0: "n", 2: "h", 3: "w"}
    with torch.no_grad(), warnings.catch_warnings(), _EXPORTING, _stdout_discarded():
        # the tracer warns that shape arithmetic is fixed at the example's size; each new shape
        # is compared with torch at its first pass instead (OnnxNetwork.forward)
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (example,), buffer, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": axes, "y": axes}, dynamo=False,
                          opset_version=OPSET)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only: its warnings are not the administrator's
    session = onnxruntime.InferenceSession(buffer.getvalue(), options,
                                           providers=["CPUExecutionProvider"])
    return OnnxNetwork(network, session, name)


@contextlib.contextmanager
def _stdout_discarded() -> Iterator[None]:
    """File descriptor 1 to /dev/null for a moment: torch's TorchScript exporter prints the
    whole graph (hundreds of lines) to the C++ stdout when an operator does not export (torch
    2.13: its logging switch is left on), which would land in ``enhance``'s output."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no stdout to protect
        yield
        return
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def relative_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """max |other - reference| / (max - min of reference); inf for another shape, NaN stays NaN."""
    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    if reference.shape != other.shape or reference.size == 0:
        return math.inf
    span = float(reference.max() - reference.min())
    return float(np.max(np.abs(other - reference))) / (span if span > 0 else 1.0)


def faster_runtime(timings: Mapping[str, float], difference: float,
                   min_speedup: float = MIN_SPEEDUP, tolerance: float = TOLERANCE) -> str:
    """onnxruntime if it took at most 1 / ``min_speedup`` of torch's time and its output is
    within ``tolerance`` of the range (NaN is not); else torch."""
    onnx = timings.get("onnxruntime")
    if onnx is None or not difference <= tolerance:
        return "torch"
    return "onnxruntime" if onnx * min_speedup <= timings["torch"] else "torch"


def probe_image(network: nn.Module, tile: int | None) -> np.ndarray:
    """(1, C, S, S) seeded random values in [0, 1]: one tile as the node runs it, S the tile
    size (at most :data:`DEFAULT_TILE`, so a 512x512 slice is one tile), at the pad multiple."""
    multiple = int(getattr(network, "pad_multiple", 1))
    side = max(multiple, (min(tile or DEFAULT_TILE, DEFAULT_TILE) // multiple) * multiple)
    channels = int(getattr(network, "in_channels", 1))
    return np.random.default_rng(0).random((1, channels, side, side), dtype=np.float32)


def choose_runtime(requested: str, network: nn.Module, device: torch.device, precision: str,
                   tile: int | None, border: int = 0, key: Hashable = None, name: str = "",
                   timer: Callable[[], float] = time.perf_counter,
                   export: Callable[..., OnnxNetwork] = export_onnx) -> tuple[str, nn.Module]:
    """(runtime, the module :func:`infer` should call) for ``requested`` (``auto|torch|
    onnxruntime``); torch runs in ``precision``, ONNX Runtime in fp32.

    ``auto`` on a CPU: export, compare on :func:`probe_image` with ``border`` mirrored pixels
    (the node's pass), time both, :func:`faster_runtime`; one ``runtime_chosen`` line with the
    numbers. ``onnxruntime`` skips the timing, not the comparison. The decision is kept per
    ``key`` (what it depends on; ``None`` measures every time).
    """
    if requested not in RUNTIME_CHOICES:
        raise DeviceError(f"runtime {requested!r}: expected one of {', '.join(RUNTIME_CHOICES)}")
    name = name or type(network).__name__
    if requested == "torch":
        return "torch", network
    level = logging.WARNING if requested == "onnxruntime" else logging.INFO
    if device.type != "cpu":
        event(log, "runtime_chosen", level, network=name, requested=requested, chosen="torch",
              reason=f"ONNX Runtime is used on CPU devices only; {device} runs torch")
        return "torch", network
    known = _DECISIONS.get(key) if key is not None and requested == "auto" else None
    if known == "torch":
        return "torch", network
    image = probe_image(network, tile)

    def run(module: nn.Module, in_precision: str) -> np.ndarray:
        return infer(image, module, device, in_precision, tile=image.shape[-1], overlap=0,
                     batch_size=1, border=border)

    try:
        example = torch.from_numpy(image[..., :64, :64].copy())
        candidate = export(network, example, torch.get_num_threads(), name)
        run(candidate, "fp32")  # the first pass at this shape compares with torch fp32
    except Exception as exc:  # export and ORT errors have no common base
        event(log, "runtime_chosen", level, network=name, requested=requested, chosen="torch",
              reason=f"ONNX export or session failed: {describe(exc)}")
        return "torch", network
    difference = max(candidate.differences.values(), default=math.inf)
    if candidate.failure is not None:
        _remember(key, requested, "torch")
        return "torch", network  # give_up logged why
    fields: dict[str, object] = {}
    if known == "onnxruntime" or requested == "onnxruntime":
        chosen = "onnxruntime"
    else:
        timings = time_precisions(lambda r: run(candidate, "fp32") if r == "onnxruntime"
                                  else run(network, precision), ("torch", "onnxruntime"),
                                  warmup=0, repeats=PROBE_REPEATS, timer=timer,
                                  budget=PROBE_BUDGET_S)
        chosen = faster_runtime(timings, difference)
        fields = {"torch_ms": round(timings["torch"] * 1000, 1),
                  "onnxruntime_ms": round(timings["onnxruntime"] * 1000, 1),
                  "speedup": round(timings["torch"] / max(timings["onnxruntime"], 1e-12), 2),
                  "min_speedup": MIN_SPEEDUP}
    event(log, "runtime_chosen", network=name, requested=requested, chosen=chosen,
          torch_precision=precision, **fields, difference=f"{difference:.1e}",
          tolerance=TOLERANCE, threads=torch.get_num_threads(), tile=image.shape[-1])
    _remember(key, requested, chosen)
    return (chosen, candidate) if chosen == "onnxruntime" else ("torch", network)


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line`` of an error, for one log line (export errors append a whole graph)."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _remember(key: Hashable, requested: str, chosen: str) -> None:
    if key is not None and requested == "auto":
        _DECISIONS[key] = chosen
