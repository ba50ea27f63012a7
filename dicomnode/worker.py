"""The worker: claim a job, run its model over the series, write the derived series.

It uses exactly the path of ``dicomnode enhance`` (``enhance.enhance_series``). A job
interrupted by a crash is queued again by ``Spool.recover`` and, thanks to deterministic UIDs,
produces identical objects that replace rather than duplicate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset

from dicomnode.cluster import ClusterEngine, JobInterrupted
from dicomnode.config import Config, WorkerConfig
from dicomnode.engine import Enhancer
from dicomnode.engine import load as load_model
from dicomnode.enhance import derivation_for, enhance_series
from dicomnode.errors import DicomNodeError
from dicomnode.files import write_dataset
from dicomnode.logs import event
from dicomnode.series import scan_files
from dicomnode.spool import Job, Spool

log = logging.getLogger(__name__)


class ModelCache:
    """Models are loaded once per worker and kept (weights are read and hashed only once)."""

    def __init__(self, worker: WorkerConfig, cluster: ClusterEngine | None = None) -> None:
        self.worker = worker
        self.cluster = cluster
        self._models: dict[str, Enhancer] = {}

    def get(self, name: str) -> Enhancer:
        if self.cluster is not None:  # [cluster] engine = "ray": the model runs on Ray actors
            return self.cluster.enhancer(name)
        if name not in self._models:
            self._models[name] = load_worker_model(name, self.worker)
        return self._models[name]


def load_worker_model(name: str, worker: WorkerConfig) -> Enhancer:
    """A model with the ``[worker]`` settings: device, precision, runtime, tile size, batch."""
    return load_model(name, **worker.load_options())  # type: ignore[arg-type]


def process_job(config: Config, spool: Spool, job: Job, models: ModelCache) -> bool:
    """Run one claimed job to ``sending`` (or ``failed`` with the reason); True on success."""
    started = time.perf_counter()
    rule = next((r for r in config.rules if r.name == job.rule), None)
    if rule is None:
        spool.fail_job(job, f"rule {job.rule!r} is no longer in the configuration")
        return False
    try:
        enhancer = models.get(job.model)
        result = scan_files(spool.series_instance_paths(job.series_uid))
        series = next((s for s in result.series if s.series_instance_uid == job.series_uid),
                      None)
        if series is None:
            raise DicomNodeError("no readable instance of the series is left in the spool")
        derivation = derivation_for(enhancer.card, rule.name, rule.series_description_suffix)
        out_dir = spool.job_dir(job.id)
        written: list[tuple[str, str, Path]] = []

        def sink(ds: Dataset) -> Path:
            path = write_dataset(ds, out_dir / f"{ds.SOPInstanceUID}.dcm")
            written.append((str(ds.SOPInstanceUID), str(ds.SOPClassUID), path))
            return path

        outcome = enhance_series(series, enhancer, derivation, sink,
                                 batch_size=config.worker.batch_size,
                                 difference=rule.difference)
    except DicomNodeError as exc:
        spool.fail_job(job, str(exc))
        event(log, "job_failed", logging.ERROR, job=job.id, series_uid=job.series_uid,
              rule=job.rule, reason=str(exc))
        return False
    except Exception as exc:  # a bug or a broken model must not stop the worker
        log.exception("job_crashed job=%s", job.id)
        spool.fail_job(job, f"internal error: {type(exc).__name__}: {exc}")
        return False
    if outcome.skipped_reason or not written:
        reason = outcome.skipped_reason or "; ".join(r for _, r in outcome.rejected[:3])
        spool.fail_job(job, f"nothing derived: {reason}")
        event(log, "job_failed", logging.WARNING, job=job.id, series_uid=job.series_uid,
              rule=job.rule, reason=reason)
        return False
    spool.finish_job(job, written)
    event(log, "job_derived", job=job.id, series_uid=job.series_uid, rule=job.rule,
          model=job.model, instances=len(written), differences=outcome.differences,
          rejected=len(outcome.rejected),
          seconds=round(time.perf_counter() - started, 3))
    return True


class Worker(threading.Thread):
    """One job at a time; wakes when work may have arrived, or every ``poll`` seconds."""

    def __init__(self, config: Config, name: str, wake: threading.Event,
                 stop: threading.Event, poll: float = 1.0,
                 on_job: Callable[[Job, bool, float], None] | None = None,
                 cluster: ClusterEngine | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.config = config
        self.wake, self.stop, self.poll = wake, stop, poll
        self.on_job = on_job
        self.cluster = cluster
        self.models = ModelCache(config.worker, cluster)
        self.busy = False

    def run(self) -> None:
        spool = Spool(self.config.node.storage_dir)
        try:
            while not self.stop.is_set():
                if self.cluster is not None and not self.cluster.ready():
                    self.stop.wait(self.poll)  # no replica: jobs stay queued, not failed
                    continue
                job = spool.claim_job(self.name)
                if job is None:
                    self.wake.wait(self.poll)
                    self.wake.clear()
                    continue
                self.busy = True
                started = time.perf_counter()
                try:
                    ok = process_job(self.config, spool, job, self.models)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except JobInterrupted:  # stopping while the cluster was away: stays claimed,
                    break  # and Spool.recover queues it again at the next start
                except BaseException as exc:  # e.g. a native decoder's panic: keep the worker
                    log.exception("job_crashed job=%s", job.id)
                    spool.fail_job(job, f"internal error: {type(exc).__name__}: {exc}")
                    ok = False
                self.busy = False
                if self.on_job is not None:
                    self.on_job(job, ok, time.perf_counter() - started)
        finally:
            spool.close()
