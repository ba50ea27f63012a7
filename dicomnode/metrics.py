"""Prometheus metrics: counters the node updates, and gauges read from the index at scrape.

Gauges come from SQLite at scrape time rather than being kept in memory, so they are right
after a restart and whatever process did the work.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dicomnode.spool import SERIES_STATES


class Metrics:
    """One registry per node (tests run several nodes in one process)."""

    def __init__(self, status: Callable[[], dict],
                 cluster: Callable[[], dict] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.instances_received = Counter(
            "dicomnode_instances_received", "Instances stored by the SCP", registry=self.registry)
        self.jobs_finished = Counter(
            "dicomnode_jobs_finished", "Jobs finished by workers", ["outcome"],
            registry=self.registry)
        self.job_duration = Histogram(
            "dicomnode_job_duration_seconds", "Time to derive one series",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800), registry=self.registry)
        self.sent = Counter("dicomnode_instances_sent", "Derived instances acknowledged",
                            ["destination"], registry=self.registry)
        self.send_failures = Counter(
            "dicomnode_send_failures", "Failed sends (each retry counts)",
            ["destination", "kind"], registry=self.registry)
        self.registry.register(_IndexCollector(status))
        if cluster is not None:
            self.registry.register(_ClusterCollector(cluster))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _IndexCollector(Collector):
    def __init__(self, status: Callable[[], dict]) -> None:
        self.status = status

    def collect(self) -> Iterable[GaugeMetricFamily]:
        status = self.status()
        series = GaugeMetricFamily("dicomnode_series", "Series by state", labels=["state"])
        for state in SERIES_STATES:
            series.add_metric([state], status["series"].get(state, 0))
        yield series
        jobs = GaugeMetricFamily("dicomnode_jobs", "Jobs by state", labels=["state"])
        for state, count in status["jobs"].items():
            jobs.add_metric([state], count)
        yield jobs
        queue = GaugeMetricFamily("dicomnode_queue_depth",
                                  "Derived instances waiting per destination",
                                  labels=["destination"])
        for name, counts in status["destinations"].items():
            queue.add_metric([name], counts.get("pending", 0))
        yield queue
        gpu = GaugeMetricFamily("dicomnode_gpu_memory_bytes", "GPU memory allocated by torch",
                                labels=["device"])
        torch = sys.modules.get("torch")  # only when a model already brought torch in
        if torch is not None and torch.cuda.is_available():
            for index in range(torch.cuda.device_count()):
                gpu.add_metric([f"cuda:{index}"], torch.cuda.memory_allocated(index))
        yield gpu


class _ClusterCollector(Collector):
    """``[cluster] engine = "ray"``: whether a model replica can take work, and how many."""

    def __init__(self, status: Callable[[], dict]) -> None:
        self.status = status

    def collect(self) -> Iterable[GaugeMetricFamily]:
        status = self.status()
        yield GaugeMetricFamily("dicomnode_cluster_up",
                                "1 when a model replica on the Ray cluster can take work",
                                value=1 if status.get("up") else 0)
        replicas = GaugeMetricFamily("dicomnode_cluster_replicas", "Model replicas by state",
                                     labels=["state"])
        alive = int(status.get("alive", 0))
        replicas.add_metric(["alive"], alive)
        replicas.add_metric(["down"], max(int(status.get("replicas", 0)) - alive, 0))
        yield replicas
        yield GaugeMetricFamily("dicomnode_cluster_failovers",
                                "Model calls sent again to another replica (this bridge)",
                                value=int(status.get("failovers", 0)))
