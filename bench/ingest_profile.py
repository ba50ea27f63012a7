"""Where the receiver's time goes per C-STORE: the node's SCP in this process, N instances
sent by DCMTK storescu on loopback (one association).

    python bench/ingest_profile.py [--count 300] [--instances DIR] [--stages | --wall] [--top 25]

Prints the wall rate, the process CPU per instance and the write-ahead log's fdatasync count,
then either

- ``--stages``: the wall time of the C-STORE handler's stages (each call timed, no
  profiler), each fdatasync, the checkpoint's ``syncfs`` calls with what the fdatasyncs
  that ran during one cost against the others, and one instance's round trip in phases
  (the sender's turn, receiving and decoding its PDUs, the handler, the response); or
- cProfile on every thread (pynetdicom's DUL and association reactor, the log's threads),
  summed: the functions with the most own and cumulative time per instance. The profilers
  time each thread's CPU (``time.thread_time``, which adds a system call per event: read the
  rows as shares) or, with ``--wall``, wall time, waits included.

Rates for the targets come from ``bench/ingest.sh``; this script says where the time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# DCMTK's, by path: an activated .venv puts pynetdicom's own `storescu` app first on PATH
DCMTK_STORESCU = "/usr/bin/storescu"
sys.path.insert(0, str(REPO))

from dicomnode import scp, spool, wal  # noqa: E402
from dicomnode.config import NodeConfig  # noqa: E402

_profiles: list[cProfile.Profile] = []
_profiles_lock = threading.Lock()
_stages: dict[str, list[float]] = {}
_intervals: dict[str, list[tuple[float, float]]] = {"fdatasync": [], "syncfs": []}


def _profile_threads(cpu: bool) -> None:
    """Every thread started from now on runs its ``run`` under its own profiler."""
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time) if cpu else cProfile.Profile()
        with _profiles_lock:
            _profiles.append(profile)
        profile.enable()
        try:
            original(self)
        finally:
            profile.disable()

    threading.Thread.run = run  # type: ignore[method-assign]


def _timed(owner: Any, name: str, label: str, intervals: str | None = None) -> None:
    """Replace ``owner.name`` by a wrapper recording each call's wall time."""
    real: Callable[..., Any] = getattr(owner, name)
    times = _stages.setdefault(label, [])

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            end = time.perf_counter()
            times.append(end - start)  # list.append is atomic under the GIL
            if intervals is not None:
                _intervals[intervals].append((start, end))

    setattr(owner, name, wrapper)


_timeline: list[tuple[str, float]] = []


def _mark(owner: Any, name: str, label: str, before: bool = True) -> None:
    """Record (label, time) on each call of ``owner.name``: at its start, or at its end."""
    real: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            _timeline.append((label, time.perf_counter()))
        try:
            return real(*args, **kwargs)
        finally:
            if not before:
                _timeline.append((label, time.perf_counter()))

    setattr(owner, name, wrapper)


def _time_stages() -> None:
    from pynetdicom import dul
    _mark(dul.DULServiceProvider, "_read_pdu_data", "read")
    _mark(scp.Receiver, "handle_store", "handler")
    _mark(dul.DULServiceProvider, "send_pdu", "respond")
    _timed(scp.Receiver, "handle_store", "handle_store (whole handler)")
    _timed(scp, "received_part10", "  received_part10 (meta + header walk)")
    _timed(wal.WriteAheadLog, "append", "  wal append (CRC + pwritev)")
    _timed(spool.Spool, "store_instance", "  spool file + index row + rename")
    _timed(spool, "atomic_write_bytes", "    file write + index row + rename")
    _timed(spool.Spool, "_index_row", "      index row (one SQLite transaction)")
    _timed(wal.WriteAheadLog, "wait_durable", "  wait_durable (all callers)")
    _timed(scp, "syncfs", "checkpoint syncfs", intervals="syncfs")


def _datasync(fd: int) -> None:
    start = time.perf_counter()
    os.fdatasync(fd)
    end = time.perf_counter()
    _stages.setdefault("fdatasync (each)", []).append(end - start)
    _intervals["fdatasync"].append((start, end))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _print_stages() -> None:
    print(f"\n{'stage (wall, ms)':<44} {'calls':>6} {'mean':>7} {'median':>7} {'p90':>7}")
    for label, times in _stages.items():
        if times:
            ordered = sorted(times)
            print(f"{label:<44} {len(times):>6} {1000 * statistics.mean(times):7.3f} "
                  f"{1000 * ordered[len(ordered) // 2]:7.3f} "
                  f"{1000 * ordered[len(ordered) * 9 // 10]:7.3f}")
    _print_timeline()
    checkpoints = _intervals["syncfs"]
    during, other = [], []
    for start, end in _intervals["fdatasync"]:
        overlaps = any(s < end and start < e for s, e in checkpoints)
        (during if overlaps else other).append(end - start)
    for label, values in (("fdatasyncs during a checkpoint syncfs", during),
                          ("fdatasyncs at other times", other)):
        if values:
            print(f"{label}: {len(values)}, mean {1000 * statistics.mean(values):.2f} ms, "
                  f"total {1000 * sum(values):.0f} ms")


def _print_timeline() -> None:
    """One instance's round trip in phases: the sender's turn (our response sent -> its next
    PDU's first byte read), receiving (-> handler called), the handler, the response."""
    phases: dict[str, list[float]] = {"sender's turn": [], "PDUs read -> handler": [],
                                      "handler": [], "handler -> response sent": []}
    responded = first_read = called = None
    handler_started = False
    for label, at in _timeline:
        if label == "read" and first_read is None:
            first_read = at
            if responded is not None:
                phases["sender's turn"].append(at - responded)
        elif label == "handler" and first_read is not None and not handler_started:
            called, handler_started = at, True
            phases["PDUs read -> handler"].append(at - first_read)
        elif label == "respond" and handler_started and called is not None:
            phases["handler -> response sent"].append(at - called)
            responded, first_read, handler_started = at, None, False
    handler = _stages.get("handle_store (whole handler)", [])
    phases["handler"] = list(handler)
    after = phases["handler -> response sent"]
    phases["handler -> response sent"] = [
        total - own for total, own in zip(after, handler, strict=False)]
    print("\nround trip per instance (wall, ms, median):  " + ",  ".join(
        f"{name} {1000 * statistics.median(values):.2f}"
        for name, values in phases.items() if values))


def _print_profile(count: int, top: int) -> None:
    with _profiles_lock:
        profiles = [p for p in _profiles if p.getstats()]
    if not profiles:
        return
    stats = pstats.Stats(profiles[0])
    for profile in profiles[1:]:
        stats.add(profile)
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}" if line \
            else filename
        rows.append((own, cumulative, calls, f"{where}({name})"))
    for title, key in (("own time", 0), ("cumulative time", 1)):
        print(f"\ntop {top} by {title}, ms per instance (calls per instance):")
        for row in sorted(rows, key=lambda r: r[key], reverse=True)[:top]:
            print(f"  {1000 * row[0] / count:7.3f} own {1000 * row[1] / count:7.3f} cum "
                  f"{row[2] / count:7.1f}  {row[3]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--instances", type=Path, help="a folder of .dcm files to send "
                        "(default: bench/make_instances.py makes COUNT)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stages", action="store_true",
                      help="no profiler: the handler's stages, fdatasyncs and checkpoints")
    mode.add_argument("--wall", action="store_true",
                      help="profile wall time (waits included) instead of thread CPU time")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        source = args.instances
        if source is None:
            source = Path(work) / "src"
            subprocess.run([sys.executable, str(REPO / "bench" / "make_instances.py"),
                            str(source), "--count", str(args.count)], check=True,
                           stdout=subprocess.DEVNULL)
        count = len(list(source.glob("*.dcm")))
        if args.stages:
            _time_stages()
        else:
            _profile_threads(cpu=not args.wall)
        port = _free_port()
        node = NodeConfig(ae_title="DICOMNODE", host="127.0.0.1", port=port,
                          storage_dir=Path(work) / "var", min_free_disk_mb=100)
        receiver = scp.Receiver(node.storage_dir, node.min_free_disk_mb, datasync=_datasync)
        server = scp.start_scp(node, receiver)
        try:
            cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            subprocess.run([DCMTK_STORESCU, "-aet", "BENCH", "-aec", "DICOMNODE", "+sd", "+r",
                            "+sp", "*.dcm", "127.0.0.1", str(port), str(source)], check=True,
                           env={**os.environ, "TCP_NODELAY": "1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.perf_counter() - wall0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            server.shutdown()
            receiver.close()
        user, system = cpu1.ru_utime - cpu0.ru_utime, cpu1.ru_stime - cpu0.ru_stime
        how = "no profiler" if args.stages else \
            f"under cProfile, {'wall' if args.wall else 'CPU'} time"
        print(f"{count} instances, one association: {count / wall:.1f} inst/s "
              f"({1000 * wall / count:.2f} ms each), CPU {1000 * user / count:.2f} ms user + "
              f"{1000 * system / count:.2f} ms system per instance, "
              f"{receiver.wal.syncs} fdatasyncs, load average {os.getloadavg()[0]:.2f}, "
              f"nice {os.nice(0)} ({how})")
        if args.stages:
            _print_stages()
        else:
            _print_profile(count, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
