"""Inference on a Ray cluster (SPEC section 10, ``[cluster] engine = "ray"``).

The node stays the DICOM face: its workers claim jobs, read and normalise slices, derive and
send as with ``engine = "local"``; only the model call goes to a Ray actor (one model replica
per ``dicomnode`` resource unit, else per GPU, else per CPU slot). The node process never
imports Ray: a child process, the *bridge*, is the Ray driver, because a driver exits 60 s
after its cluster's head goes away and the node must keep receiving. The bridge sends each
call to the least busy live replica and, when a replica or its machine dies, sends it again
to another one; the node re-sends calls a dead bridge never answered to the next bridge. A job
whose calls wait stays claimed (``processing``) and is never failed for a cluster outage;
jobs not yet claimed stay ``queued`` while no replica is up (``Worker`` asks ``ready()``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from dicomnode.config import ClusterConfig, WorkerConfig
from dicomnode.errors import DicomNodeError
from dicomnode.logs import event

log = logging.getLogger(__name__)

STATUS_FILE = "cluster.json"
RESOURCE = "dicomnode"  # a custom Ray resource: one replica per unit (ray start --resources)
NAMESPACE = "dicomnode"
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)
CONNECT_TIMEOUT = 60.0  # ray.init waits forever for an address where nothing answers
SYNC_INTERVAL = 10.0  # how often the bridge looks for new nodes (more replicas)
SERIES_CACHE = 32  # per-series samples kept by the bridge (and bound models by each replica)


class ClusterError(DicomNodeError):
    """A replica ran the model and the model refused or failed (not a cluster outage)."""


class JobInterrupted(BaseException):
    """The node stops while a call waits for the cluster. A BaseException so that the job
    is not failed on the way out: it stays ``processing`` and ``Spool.recover`` queues it
    again at the next start."""


# -- the node's side ---------------------------------------------------------------------


@dataclass
class _Call:
    id: int
    kind: str  # describe | run
    model: str
    key: str | None = None
    sample: np.ndarray | None = None
    stack: np.ndarray | None = None
    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    error: str | None = None


class ClusterEngine:
    """The node's handle on the cluster: starts (and restarts) the bridge, sends it model
    calls, keeps its last status in ``storage_dir/cluster.json`` for ``dicomnode status``."""

    def __init__(self, cluster: ClusterConfig, worker: WorkerConfig, storage_dir: Path,
                 stop: threading.Event) -> None:
        self.cluster, self.worker, self.stop = cluster, worker, stop
        self.status_path = Path(storage_dir) / STATUS_FILE
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        self._conn: Connection | None = None
        self._bridge: subprocess.Popen | None = None
        self._keys_sent: set[str] = set()
        self._state: dict[str, Any] = {
            "engine": "ray", "address": cluster.address, "up": False, "replicas": 0,
            "alive": 0, "failovers": 0, "calls": 0, "bridge_starts": 0,
            "reason": "connecting to the Ray cluster", "since": time.time(),
        }
        self._up = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="cluster",
                                            daemon=True)
        self._enhancers: dict[str, RemoteEnhancer] = {}

    # -- lifecycle

    def start(self) -> None:
        self._write_status()
        self._supervisor.start()

    def close(self) -> None:
        """Stop the bridge (its replicas end with it); its exit ends the supervisor."""
        self.stop.set()
        self._up.clear()
        with self._send_lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send(("stop",))
        bridge = self._bridge
        if bridge is not None and bridge.poll() is None:
            try:
                bridge.wait(15)
            except subprocess.TimeoutExpired:
                bridge.kill()
                bridge.wait(15)
        self._supervisor.join(5)

    # -- what workers use

    def ready(self) -> bool:
        """Whether a live replica can take work now (workers claim jobs only then)."""
        return self._up.is_set()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def enhancer(self, model: str) -> RemoteEnhancer:
        if model not in self._enhancers:
            info = self.call(_Call(0, "describe", model))
            self._enhancers[model] = RemoteEnhancer(self, info)
        return self._enhancers[model]

    def call(self, call: _Call) -> Any:
        """Send one call and wait for its answer, across replica deaths and bridge restarts;
        raises ClusterError when the model itself failed, JobInterrupted when stopping."""
        call.id = next(self._ids)
        with self._lock:
            self._pending[call.id] = call
        self._send(call)
        try:
            while not call.done.wait(0.5):
                if self.stop.is_set() and not self._up.is_set():
                    raise JobInterrupted("the node is stopping; the job is queued again at "
                                         "the next start")
        finally:
            with self._lock:
                self._pending.pop(call.id, None)
        if call.error is not None:
            raise ClusterError(call.error)
        return call.value

    # -- the bridge

    def _send(self, call: _Call, with_sample: bool = False) -> None:
        with self._send_lock:
            if self._conn is None:
                return  # sent when the next bridge is up
            sample = None
            if call.key and (with_sample or call.key not in self._keys_sent):
                sample = call.sample
                self._keys_sent.add(call.key)
            with contextlib.suppress(OSError):  # a dead bridge: re-sent after the restart
                self._conn.send((call.kind, call.id, call.model, call.key, sample, call.stack))

    def _supervise(self) -> None:
        failures = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self._run_bridge()
            except Exception as exc:  # keep supervising whatever one bridge did
                log.exception("cluster_bridge_error")
                self._update(up=False, reason=f"bridge error: {type(exc).__name__}: {exc}")
            if self.stop.is_set():
                break
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            self.stop.wait(RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)])

    def _run_bridge(self) -> None:
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", "dicomnode.cluster", "--fd", str(theirs.fileno()),
                   "--address", self.cluster.address, "--worker",
                   json.dumps(asdict(self.worker))]
        self._bridge = subprocess.Popen(command, pass_fds=(theirs.fileno(),),
                                        stdin=subprocess.DEVNULL)
        theirs.close()
        conn = Connection(ours.detach())
        with self._lock:
            self._state["bridge_starts"] += 1
        event(log, "cluster_bridge_started", pid=self._bridge.pid,
              address=self.cluster.address)
        with self._send_lock:
            self._conn = conn
            self._keys_sent = set()
            if self.stop.is_set():  # close() ran while this bridge was starting
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
        with self._lock:
            waiting = sorted(self._pending.values(), key=lambda c: c.id)
        for call in waiting:  # answered by no bridge yet (a dead bridge lost them)
            self._send(call)
        try:
            while True:
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    break
                self._receive(message)
        finally:
            with self._send_lock:
                self._conn = None
            conn.close()
            code = self._bridge.wait()
            self._up.clear()
            if not self.stop.is_set():
                reason = self.status().get("reason", "")
                self._update(up=False, alive=0,
                             reason=f"the Ray bridge process exited (code {code}); "
                             f"{reason}".rstrip("; "))
                event(log, "cluster_bridge_exited", logging.WARNING, code=code,
                      reason=self.status()["reason"])

    def _receive(self, message: tuple) -> None:
        kind = message[0]
        if kind == "status":
            self._update(**message[1])
            return
        with self._lock:
            call = self._pending.get(message[1])
        if call is None:
            return  # its worker gave up (stopping)
        if kind == "resend":  # the bridge forgot this series' sample (cache or restart)
            self._send(call, with_sample=True)
        elif kind == "ok":
            call.value = message[2]
            call.done.set()
        elif kind == "error":
            call.error = message[2]
            call.done.set()

    def _update(self, **changes: Any) -> None:
        with self._lock:
            was_up = self._state["up"]
            if "up" in changes and changes["up"] != was_up:
                changes["since"] = time.time()
            self._state.update(changes)
            state = dict(self._state)
        if state["up"]:
            self._up.set()
        else:
            self._up.clear()
        if state["up"] != was_up:
            event(log, "cluster_up" if state["up"] else "cluster_down",
                  logging.INFO if state["up"] else logging.WARNING,
                  address=state["address"], replicas=state["alive"],
                  reason=state.get("reason", ""))
        self._write_status()

    def _write_status(self) -> None:
        state = {**self.status(), "updated_at": time.time()}
        tmp = self.status_path.with_suffix(".tmp")
        try:
            self.status_path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, self.status_path)
        except OSError as exc:
            event(log, "cluster_status_unwritable", logging.WARNING, path=self.status_path,
                  reason=str(exc))


def read_status(storage_dir: Path) -> dict[str, Any] | None:
    """The last cluster status a node wrote (``dicomnode status`` runs in another process)."""
    try:
        return json.loads((Path(storage_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


class RemoteEnhancer:
    """An :class:`dicomnode.engine.Enhancer` whose model runs on the cluster. The card comes
    from a replica, so the labels name the model that actually ran. A series' sample goes to
    the cluster once (keyed); the replica keeps what ``for_series`` returned for it."""

    def __init__(self, engine: ClusterEngine, info: dict[str, Any]) -> None:
        self.engine = engine
        self.card = info["card"]
        self.context = int(info["context"])
        self.needs_sample = bool(info["needs_sample"])

    def for_series(self, sample: Sequence[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        if not self.needs_sample:
            return lambda stack: self._run(stack, "", None)  # "": no sample, one per model
        key = uuid.uuid4().hex
        stacked = np.stack([np.asarray(s, dtype=np.float32) for s in sample])
        return lambda stack: self._run(stack, key, stacked)

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        return self._run(stack, None, None)

    def _run(self, stack: np.ndarray, key: str | None, sample: np.ndarray | None) -> np.ndarray:
        return self.engine.call(_Call(0, "run", self.card.name, key, sample,
                                      np.ascontiguousarray(stack)))


# -- the bridge (a child process of the node; the Ray driver) ----------------------------


class Replica:
    """A model replica: one Ray actor per slot; models are loaded on first use and kept."""

    def __init__(self, worker: dict[str, Any]) -> None:
        self.worker = WorkerConfig(**worker)
        self.models: dict[str, Any] = {}
        self.bound: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def ping(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def describe(self, model: str) -> dict[str, Any]:
        enhancer = self._model(model)
        return {"card": enhancer.card, "context": int(enhancer.context),
                "needs_sample": bool(enhancer.needs_sample)}

    def run(self, model: str, key: str | None, sample: np.ndarray | None,
            stack: np.ndarray) -> np.ndarray:
        enhancer = self._model(model)
        if key is None:
            return np.asarray(enhancer(stack))
        run = self.bound.get((model, key))
        if run is None:
            run = enhancer.for_series(list(sample) if sample is not None else [])
            self.bound[(model, key)] = run
            while len(self.bound) > SERIES_CACHE:
                self.bound.popitem(last=False)
        self.bound.move_to_end((model, key))
        return np.asarray(run(stack))

    def _model(self, name: str) -> Any:
        if name not in self.models:
            from dicomnode.engine import load

            self.models[name] = load(name, **self.worker.load_options())  # type: ignore[arg-type]
        return self.models[name]


@dataclass
class _Slot:
    handle: Any
    busy: int = 0
    calls: int = 0
    down_until: float = 0.0  # 0: alive; else when to probe it again
    probe: Any = None  # an ObjectRef of ping() while probing


class _Bridge:
    """The Ray driver: a pool of replicas, calls in flight, failover to another replica."""

    def __init__(self, conn: Connection, worker: dict[str, Any]) -> None:
        import ray

        self.ray, self.conn, self.worker = ray, conn, worker
        self.replica_class = ray.remote(Replica)
        self.slots: list[_Slot] = []
        self.waiting: list[tuple] = []  # calls no live replica has taken yet
        self.inflight: dict[Any, tuple[tuple, _Slot]] = {}
        self.samples: OrderedDict[str, Any] = OrderedDict()
        self.inbox: list[tuple] = []
        self.inbox_lock = threading.Lock()
        self.parent_gone = threading.Event()
        self.failovers = 0
        self.last_status: dict[str, Any] = {}
        self.last_sync = 0.0

    def serve(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()
        while not self.parent_gone.is_set():
            now = time.monotonic()
            if now - self.last_sync > SYNC_INTERVAL:
                self._sync()
                self.last_sync = now
            with self.inbox_lock:
                messages, self.inbox = self.inbox, []
            for message in messages:
                self._accept(message)
            self._probe(now)
            self._dispatch()
            self._collect()
            self._report()

    def _read(self) -> None:
        try:
            while True:
                message = self.conn.recv()
                if message[0] == "stop":
                    break
                with self.inbox_lock:
                    self.inbox.append(message)
        except (EOFError, OSError):
            pass
        self.parent_gone.set()

    def _sync(self) -> None:
        """One replica per slot of the cluster's live nodes; more when machines join (a
        replica of a dead machine restarts wherever its resources come back)."""
        total, options = _slots(self.ray.cluster_resources())
        while len(self.slots) < total:
            handle = self.replica_class.options(
                max_restarts=-1, max_task_retries=0, max_concurrency=1, **options
            ).remote(self.worker)
            self.slots.append(_Slot(handle, down_until=time.monotonic()))  # alive once pinged

    def _accept(self, message: tuple) -> None:
        kind, call_id, model, key, sample, stack = message
        if key:  # a series with a sample
            if sample is not None:
                self.samples[key] = self.ray.put(sample)
            if key not in self.samples:
                self._send(("resend", call_id))
                return
            self.samples.move_to_end(key)
            while len(self.samples) > SERIES_CACHE:
                self.samples.popitem(last=False)
        self.waiting.append((kind, call_id, model, key, self.samples.get(key), stack))

    def _probe(self, now: float) -> None:
        for slot in self.slots:
            if slot.down_until and slot.probe is None and now >= slot.down_until:
                slot.probe = slot.handle.ping.remote()

    def _dispatch(self) -> None:
        while self.waiting:
            alive = [s for s in self.slots if not s.down_until]
            if not alive:
                return
            slot = min(alive, key=lambda s: (s.busy, s.calls))
            kind, _, model, key, sample_ref, stack = call = self.waiting.pop(0)
            if kind == "describe":
                ref = slot.handle.describe.remote(model)
            else:
                ref = slot.handle.run.remote(model, key, sample_ref, stack)
            slot.busy += 1
            self.inflight[ref] = (call, slot)

    def _collect(self) -> None:
        probes = {s.probe: s for s in self.slots if s.probe is not None}
        refs = [*self.inflight, *probes]
        if not refs:
            time.sleep(0.05)  # nothing in flight: poll the inbox at 20 Hz
            return
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=0.05)
        for ref in ready:
            if ref in probes:
                slot = probes[ref]
                slot.probe = None
                try:
                    self.ray.get(ref)
                    slot.down_until = 0.0
                except self.ray.exceptions.RayError:
                    slot.down_until = time.monotonic() + 2.0
                continue
            call, slot = self.inflight.pop(ref)
            slot.busy -= 1
            try:
                value = self.ray.get(ref)
            except self.ray.exceptions.RayTaskError as exc:  # the model itself failed
                cause = exc.cause if exc.cause is not None else exc
                self._send(("error", call[1], f"{type(cause).__name__}: {cause}"))
                continue
            except self.ray.exceptions.RayError as exc:  # replica, worker or node lost
                self.failovers += 1
                slot.down_until = time.monotonic() + 2.0
                self.waiting.insert(0, call)
                _log_line("replica_lost", call=call[1], failover=self.failovers,
                          reason=f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            slot.calls += 1
            self._send(("ok", call[1], value))

    def _report(self) -> None:
        alive = sum(1 for s in self.slots if not s.down_until)
        status = {"up": alive > 0, "replicas": len(self.slots), "alive": alive,
                  "failovers": self.failovers, "calls": sum(s.calls for s in self.slots),
                  "reason": "" if alive else "no model replica is alive on the Ray cluster "
                  f"({len(self.slots)} placed; waiting for a node with a free slot)"}
        if status != self.last_status:
            self.last_status = status
            self._send(("status", status))

    def _send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError:
            self.parent_gone.set()


def _slots(resources: dict[str, float]) -> tuple[int, dict[str, Any]]:
    """How many replicas the cluster has room for, and the resources each asks."""
    if resources.get(RESOURCE, 0) >= 1:
        return int(resources[RESOURCE]), {"num_cpus": 0, "resources": {RESOURCE: 1}}
    if resources.get("GPU", 0) >= 1:
        return int(resources["GPU"]), {"num_cpus": 0, "num_gpus": 1}
    return max(1, int(resources.get("CPU", 1))), {"num_cpus": 1}


def reachable(address: str) -> str | None:
    """None when something accepts connections at ``host:port`` (ray.init would wait for
    ever on an address where nothing answers), else why not."""
    if address == "auto":
        return None
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return None
    except OSError as exc:
        return f"nothing answers at {address} ({exc}); is ray start --head running there?"


def _log_line(name: str, **fields: Any) -> None:
    parts = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"cluster_bridge {name} {parts}", file=sys.stderr, flush=True)


def bridge_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicomnode.cluster")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--worker", required=True)
    args = parser.parse_args(argv)
    conn = Connection(args.fd)

    def down(reason: str) -> int:
        with contextlib.suppress(OSError):
            conn.send(("status", {"up": False, "alive": 0, "reason": reason}))
        return 2

    problem = reachable(args.address)
    if problem is not None:
        return down(f"cannot reach the Ray cluster: {problem}")
    watchdog = threading.Timer(CONNECT_TIMEOUT, lambda: (down(
        f"cannot reach the Ray cluster at {args.address}: no answer in {CONNECT_TIMEOUT:.0f} s"),
        os._exit(2)))
    watchdog.daemon = True
    watchdog.start()
    try:
        import ray

        ray.init(address=args.address, namespace=NAMESPACE, logging_level=logging.WARNING,
                 log_to_driver=False, configure_logging=True)
    except ImportError:
        return down("the Ray package is not installed; run pip install 'dicomnode[cluster]'")
    except Exception as exc:  # ConnectionError, RuntimeError ...: the reason is in the text
        return down(f"cannot reach the Ray cluster at {args.address}: {exc}")
    finally:
        watchdog.cancel()
    bridge = _Bridge(conn, json.loads(args.worker))
    try:
        bridge.serve()
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(bridge_main())
