"""``dicomnode serve``: the SCP, router, workers, forwarders and status server, together.

Each part talks to the others only through the spool's SQLite index (plus wake-up events to
save latency), so any of them could later run in another process or on another machine.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from dicomnode.cluster import ClusterEngine
from dicomnode.config import Config
from dicomnode.http import StatusServer
from dicomnode.logs import event
from dicomnode.metrics import Metrics
from dicomnode.router import route_stable_series
from dicomnode.scp import Receiver, start_scp
from dicomnode.scu import Forwarder, Outcome
from dicomnode.spool import Job, Spool
from dicomnode.worker import Worker

log = logging.getLogger(__name__)

PURGE_INTERVAL = 3600.0
SHUTDOWN_GRACE = 30.0


class Node:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stopping = threading.Event()
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        self.work_wake = threading.Event()
        self.send_wakes = {d.name: threading.Event() for d in config.destinations}
        self.spool = Spool(config.node.storage_dir, shared=True)
        recovered = self.spool.recover()
        event(log, "spool_recovered", storage_dir=config.node.storage_dir, **recovered)
        self._status_lock = threading.Lock()
        self.cluster = (ClusterEngine(config.cluster, config.worker, config.node.storage_dir,
                                      self.stopping)
                        if config.cluster.engine == "ray" else None)
        self.metrics = Metrics(self._status,
                               cluster=self.cluster.status if self.cluster else None)
        self.receiver = Receiver(config.node.storage_dir, config.node.min_free_disk_mb,
                                 on_stored=self.metrics.instances_received.inc)
        self.workers = [
            Worker(config, f"worker-{i}", self.work_wake, self.stopping, on_job=self._job_done,
                   cluster=self.cluster)
            for i in range(config.worker.workers)
        ]
        self.forwarders = [
            Forwarder(config, d, self.send_wakes[d.name], self.stopping,
                      on_outcomes=self._sent)
            for d in config.destinations
        ]
        self.router = threading.Thread(target=self._route_loop, name="router", daemon=True)
        self.scp = None
        self.http: StatusServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.scp = start_scp(self.config.node, self.receiver)
        if self.cluster is not None:
            self.cluster.start()
        for thread in (*self.workers, *self.forwarders, self.router):
            thread.start()
        self.http = StatusServer(self.config.http.host, self.config.http.port, self.health,
                                 self.metrics.render, self._series, config=self.config)
        self.http.start()
        event(log, "node_started", ae_title=self.config.node.ae_title,
              port=self.config.node.port, http_port=self.http.port,
              workers=len(self.workers), destinations=len(self.forwarders))

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM, then shut down gracefully."""
        def request_stop(signum: int, frame: FrameType | None) -> None:
            event(log, "shutdown_requested", signal=signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        self.start()
        while not self.stopping.wait(1.0):
            pass
        self.shutdown()

    def shutdown(self) -> None:
        """Stop accepting, let work in flight finish (or leave it queued), close.

        A second call (``run``'s own and a caller's both stopping) does nothing.
        """
        with self._shutdown_lock:
            if self._shut_down:
                return
            self._shut_down = True
        self.stopping.set()
        if self.scp is not None:
            self.scp.shutdown()  # no new associations; open ones end with the server
        self.receiver.close()  # the write-ahead log's last checkpoint: no segment left
        for wake in (self.work_wake, *self.send_wakes.values()):
            wake.set()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for thread in (*self.workers, *self.forwarders, self.router):
            thread.join(max(deadline - time.monotonic(), 0.1))
        unfinished = [t.name for t in (*self.workers, *self.forwarders) if t.is_alive()]
        if self.cluster is not None:
            self.cluster.close()
        if self.http is not None:
            self.http.stop()
        self.spool.close()
        event(log, "node_stopped", unfinished=",".join(unfinished) or "none",
              note="unfinished jobs are queued again at the next start" if unfinished else "")

    # -- loops and callbacks ---------------------------------------------------------------

    def _route_loop(self) -> None:
        spool = Spool(self.config.node.storage_dir)
        interval = min(1.0, self.config.node.series_idle_seconds / 4)
        last_purge = 0.0
        try:
            while not self.stopping.wait(interval):
                try:
                    if route_stable_series(self.config, spool):
                        self.work_wake.set()
                    if time.time() - last_purge > PURGE_INTERVAL:
                        purged = spool.purge(self.config.node.retention_hours)
                        last_purge = time.time()
                        if any(purged.values()):
                            event(log, "retention_purge", **purged)
                except Exception:  # keep routing whatever one series did
                    log.exception("router_error")
        finally:
            spool.close()

    def _job_done(self, job: Job, ok: bool, seconds: float) -> None:
        self.metrics.jobs_finished.labels("derived" if ok else "failed").inc()
        self.metrics.job_duration.observe(seconds)
        for name in job.destinations:
            if name in self.send_wakes:
                self.send_wakes[name].set()

    def _sent(self, destination: str, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            if outcome.ok:
                self.metrics.sent.labels(destination).inc()
            elif outcome.attempted:
                kind = "transient" if outcome.transient else "permanent"
                self.metrics.send_failures.labels(destination, kind).inc()

    # -- status ----------------------------------------------------------------------------

    def _status(self) -> dict:
        with self._status_lock:
            return self.spool.status()

    def _series(self) -> list[dict]:
        with self._status_lock:
            return self.spool.series_list()

    def health(self) -> dict:
        checks = {
            "scp": self.scp is not None and not self.stopping.is_set(),
            "router": self.router.is_alive(),
            "workers": all(w.is_alive() for w in self.workers),
            "forwarders": all(f.is_alive() for f in self.forwarders),
        }
        try:
            self._status()
            checks["index"] = True
        except Exception:
            checks["index"] = False
        report: dict = {"ok": all(checks.values()), "checks": checks}
        if self.cluster is not None:  # reported, not a check: the node keeps receiving
            report["cluster"] = self.cluster.status()
        return report
