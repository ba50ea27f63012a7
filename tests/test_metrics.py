"""Prometheus metrics (dicomnode.metrics): the text exposition, parsed back as a scraper would.

The gauges are read from a real spool index (an empty one, or the dict ``Spool.status`` gives);
the counters are updated as the node updates them.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from dicomnode.metrics import Metrics
from dicomnode.spool import SERIES_STATES, Spool

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _samples(metrics: Metrics) -> Samples:
    """Every sample by (name, sorted labels); the exposition must parse."""
    result: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode("utf-8")):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in result, f"sample {key} exposed twice"
            result[key] = sample.value
    return result


def _status(**parts: dict) -> dict:
    return {"series": {}, "jobs": {}, "instances": 0, "destinations": {}, "failed_jobs": []
            } | parts


def test_an_empty_spool_gives_every_series_state_at_zero(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "var")
    try:
        samples = _samples(Metrics(spool.status))
    finally:
        spool.close()
    for state in SERIES_STATES:
        assert samples[("dicomnode_series", (("state", state),))] == 0
    assert samples[("dicomnode_instances_received_total", ())] == 0
    assert not [name for name, _ in samples if name in ("dicomnode_jobs",
                                                        "dicomnode_queue_depth")]
    assert not [name for name, _ in samples if name.startswith("dicomnode_cluster")]


def test_gauges_follow_the_index_at_each_scrape() -> None:
    status = _status(series={"receiving": 2, "done": 5}, jobs={"queued": 3, "failed": 1},
                     destinations={"pacs": {"pending": 7, "sent": 4}, "outbox": {"sent": 1}})
    metrics = Metrics(lambda: status)
    samples = _samples(metrics)
    assert samples[("dicomnode_series", (("state", "receiving"),))] == 2
    assert samples[("dicomnode_series", (("state", "done"),))] == 5
    assert samples[("dicomnode_series", (("state", "failed"),))] == 0
    assert samples[("dicomnode_jobs", (("state", "queued"),))] == 3
    assert samples[("dicomnode_jobs", (("state", "failed"),))] == 1
    assert samples[("dicomnode_queue_depth", (("destination", "pacs"),))] == 7
    assert samples[("dicomnode_queue_depth", (("destination", "outbox"),))] == 0
    status["series"] = {"done": 6}  # read again at the next scrape, nothing cached
    assert _samples(metrics)[("dicomnode_series", (("state", "receiving"),))] == 0
    assert _samples(metrics)[("dicomnode_series", (("state", "done"),))] == 6


def test_counters_and_the_histogram_with_their_labels() -> None:
    metrics = Metrics(_status)
    metrics.instances_received.inc()
    metrics.instances_received.inc()
    metrics.jobs_finished.labels("derived").inc()
    metrics.job_duration.observe(0.7)
    metrics.job_duration.observe(45)
    metrics.sent.labels("pacs").inc(3)
    metrics.send_failures.labels("pacs", "transient").inc()
    samples = _samples(metrics)
    assert samples[("dicomnode_instances_received_total", ())] == 2
    assert samples[("dicomnode_jobs_finished_total", (("outcome", "derived"),))] == 1
    assert samples[("dicomnode_instances_sent_total", (("destination", "pacs"),))] == 3
    assert samples[("dicomnode_send_failures_total",
                    (("destination", "pacs"), ("kind", "transient")))] == 1
    bucket = "dicomnode_job_duration_seconds_bucket"
    assert samples[(bucket, (("le", "0.5"),))] == 0
    assert samples[(bucket, (("le", "1.0"),))] == 1
    assert samples[(bucket, (("le", "30.0"),))] == 1
    assert samples[(bucket, (("le", "60.0"),))] == 2
    assert samples[(bucket, (("le", "+Inf"),))] == 2
    assert samples[("dicomnode_job_duration_seconds_count", ())] == 2
    assert samples[("dicomnode_job_duration_seconds_sum", ())] == 45.7


def test_label_values_are_escaped() -> None:
    """A state or destination name with a quote, backslash or newline still parses back."""
    odd = 'a "quoted" back\\slash\nnew line'
    metrics = Metrics(lambda: _status(jobs={odd: 1}, destinations={odd: {"pending": 2}}))
    text = metrics.render().decode("utf-8")
    assert 'state="a \\"quoted\\" back\\\\slash\\nnew line"' in text
    samples = _samples(metrics)
    assert samples[("dicomnode_jobs", (("state", odd),))] == 1
    assert samples[("dicomnode_queue_depth", (("destination", odd),))] == 2


def test_each_node_has_its_own_registry() -> None:
    first, second = Metrics(_status), Metrics(_status)
    first.instances_received.inc()
    assert _samples(first)[("dicomnode_instances_received_total", ())] == 1
    assert _samples(second)[("dicomnode_instances_received_total", ())] == 0


def test_cluster_gauges() -> None:
    cluster = {"up": True, "alive": 2, "replicas": 3, "failovers": 4}
    samples = _samples(Metrics(_status, cluster=lambda: cluster))
    assert samples[("dicomnode_cluster_up", ())] == 1
    assert samples[("dicomnode_cluster_replicas", (("state", "alive"),))] == 2
    assert samples[("dicomnode_cluster_replicas", (("state", "down"),))] == 1
    assert samples[("dicomnode_cluster_failovers", ())] == 4
    down = _samples(Metrics(_status, cluster=lambda: {"up": False, "reason": "no answer"}))
    assert down[("dicomnode_cluster_up", ())] == 0
    assert down[("dicomnode_cluster_replicas", (("state", "alive"),))] == 0
    assert down[("dicomnode_cluster_replicas", (("state", "down"),))] == 0
