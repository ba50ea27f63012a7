"""Which torch device and number format a model runs on, decided once and checked.

``[worker] device`` and ``--device`` say ``auto|cpu|cuda|cuda:N|mps``; a device that is asked for
but absent is an error naming what was found, never a silent fall back to the CPU (an
administrator who asked for the GPU wants to know it is missing). Nothing here calls ``.cuda()``:
every device is resolved through :func:`resolve_device` first.

Precision: reduced formats run only where they are both fast on the hardware and validated on
the model card (``[inference] precisions``), because a card that was not checked in fp16 may lose
accuracy there. On a CPU, whether bf16 is fast depends on the network as much as on the chip
(plain 3x3 convolutions ran 2.4x faster than fp32 on a Zen 4 with AVX512-BF16; NAFNet ran
slower until its LayerNorm became one fused op, and now gains 1.0-1.2x with its full-resolution
level kept in fp32), so ``auto`` times the loaded network in both formats once and keeps the
answer for the process.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path

import torch

from dicomnode.engine.choices import DEVICE_PATTERN, PRECISIONS
from dicomnode.errors import DeviceError
from dicomnode.logs import event

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# bf16 on a CPU only when the measured forward pass is at least this much faster: below it the
# gain is within the noise of a shared machine and not worth bf16's rounding.
AUTO_MIN_SPEEDUP = 1.2
PROBE_WARMUP, PROBE_REPEATS = 2, 3
# Timed rounds stop once the measurement has taken this long (at least one round is timed): on
# a CPU shared with other work one NAFNet round took 8 s instead of 0.5 (docs/BENCHMARKS.md).
PROBE_BUDGET_S = 10.0
_CPU_DECISIONS: dict[Hashable, str] = {}  # (architecture, parameters, threads) -> precision


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for ``auto|cpu|cuda|cuda:N|mps``; DeviceError if it is absent.

    ``auto`` prefers CUDA, then Apple's MPS, then the CPU.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise DeviceError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise DeviceError("device 'mps' was asked for but Apple's Metal (MPS) backend is not "
                              "available here; use device = \"auto\" or \"cpu\"")
        return torch.device("mps")
    index = int(name.partition(":")[2] or 0)
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {name!r} was asked for but CUDA is not available (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}): check the GPU driver and the torch "
            "build, or use device = \"auto\" or \"cpu\""
        )
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"device {name!r} was asked for but this machine has {count} CUDA device(s) "
            f"(cuda:0 to cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def cpu_has_amx() -> bool:
    """True on CPUs with AMX tiles (Intel Sapphire Rapids and later): bf16 matrices at speed.

    Without AMX (or at least AVX512-BF16) bf16 is emulated on the CPU and slower than fp32.
    Reported by the benchmarks; ``precision = "auto"`` measures instead of trusting it.
    """
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            pass
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    return "amx_bf16" in flags


def supported_precisions(device: torch.device) -> tuple[str, ...]:
    """Formats this device computes at all (fast or not)."""
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        return ("fp32", "fp16", "bf16") if bf16 else ("fp32", "fp16")
    if device.type == "mps":
        return ("fp32", "fp16")
    return ("fp32", "bf16")


def choose_precision(requested: str, device: torch.device,
                     allowed: Iterable[str] = ("fp32",),
                     probe: Callable[[str], object] | None = None,
                     probe_key: Hashable = None,
                     timer: Callable[[], float] = time.perf_counter) -> str:
    """The format to run in: ``requested`` (``auto|fp32|fp16|bf16``) within what the card allows.

    ``auto`` picks the fastest format that is fast on this device and validated on the card:
    bf16 then fp16 on CUDA, fp16 on MPS; on a CPU bf16 only where ``probe`` (one forward pass of
    the actual network in the given format) measures it :data:`AUTO_MIN_SPEEDUP` times faster
    than fp32 (:func:`measured_cpu_precision`, cached per ``probe_key``), never by the CPU's
    name or flags alone; without a probe, fp32. An explicit reduced format the card does not
    validate runs in fp32 with a warning (fp32 is always accurate); one the device cannot
    compute is an error.
    """
    allowed = tuple(allowed)
    if requested not in ("auto", *PRECISIONS):
        raise DeviceError(f"precision {requested!r}: expected auto, fp32, fp16 or bf16")
    if requested == "auto":
        if device.type == "cuda":
            preferred = [p for p in ("bf16", "fp16") if p in supported_precisions(device)]
        elif device.type == "mps":
            preferred = ["fp16"]
        elif "bf16" in allowed and probe is not None:
            return measured_cpu_precision(probe, probe_key, timer)
        else:
            preferred = []
        return next((p for p in preferred if p in allowed), "fp32")
    if requested == "fp32":
        return "fp32"
    if requested not in supported_precisions(device):
        raise DeviceError(
            f"precision {requested!r} is not supported on {device} (supported: "
            f"{', '.join(supported_precisions(device))}); set [worker] precision = \"auto\""
        )
    if requested not in allowed:
        event(log, "precision_not_validated", logging.WARNING, requested=requested,
              allowed=",".join(allowed), using="fp32")
        return "fp32"
    return requested


def measured_cpu_precision(probe: Callable[[str], object], key: Hashable = None,
                           timer: Callable[[], float] = time.perf_counter) -> str:
    """fp32 or bf16 for a network on this CPU, by timing ``probe`` in both (once per ``key``).

    The key names what the time depends on (architecture, its parameters, the thread count);
    ``None`` measures every time. The numbers are logged as one ``precision_measured`` event.
    """
    if key is not None and key in _CPU_DECISIONS:
        return _CPU_DECISIONS[key]
    timings = time_precisions(probe, ("fp32", "bf16"), timer=timer)
    chosen = faster_precision(timings)
    event(log, "precision_measured", fp32_ms=round(timings["fp32"] * 1000, 1),
          bf16_ms=round(timings["bf16"] * 1000, 1),
          speedup=round(timings["fp32"] / max(timings["bf16"], 1e-12), 2),
          min_speedup=AUTO_MIN_SPEEDUP, threads=torch.get_num_threads(), chosen=chosen,
          network=str(key[0]) if isinstance(key, tuple) and key else str(key))
    if key is not None:
        _CPU_DECISIONS[key] = chosen
    return chosen


def time_precisions(probe: Callable[[str], object], precisions: Iterable[str],
                    warmup: int = PROBE_WARMUP, repeats: int = PROBE_REPEATS,
                    timer: Callable[[], float] = time.perf_counter,
                    budget: float = PROBE_BUDGET_S) -> dict[str, float]:
    """Median seconds of ``probe(precision)`` for each precision, after ``warmup`` calls each.

    The formats take turns in every round, so load from other processes that comes and goes
    during the measurement falls on both alike; rounds stop after ``budget`` seconds.
    """
    precisions = tuple(precisions)
    began = timer()
    for _ in range(warmup):
        for precision in precisions:
            probe(precision)
    times: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(repeats):
        for precision in precisions:
            start = timer()
            probe(precision)
            times[precision].append(timer() - start)
        if timer() - began > budget:
            break
    return {p: statistics.median(t) for p, t in times.items()}


def faster_precision(timings: Mapping[str, float],
                     min_speedup: float = AUTO_MIN_SPEEDUP) -> str:
    """bf16 if it took at most 1 / ``min_speedup`` of fp32's time, else fp32."""
    fp32, bf16 = timings["fp32"], timings.get("bf16")
    return "bf16" if bf16 is not None and bf16 * min_speedup <= fp32 else "fp32"


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = fp32); DeviceError if absent."""
    if precision == "fp32":
        return None
    if precision not in supported_precisions(device):
        raise DeviceError(
            f"precision {precision!r} is not supported on {device} (supported: "
            f"{', '.join(supported_precisions(device))})"
        )
    return DTYPES[precision]


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device allocation failure that a smaller batch or tile may avoid."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # MPS reports exhaustion as a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "MPS backend out of memory" in str(exc)


def release_cached_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, before retrying smaller."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
