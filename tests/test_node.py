"""The Node (dicomnode.node) in this process: its parts start together and stop together.

The whole node under load, with Orthanc and the command line, is tested in tests/node/; here a
Node with a temporary config on free loopback ports is started, checked with DCMTK's echoscu,
storescu and an HTTP client, and shut down.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicomnode.config import parse_config
from dicomnode.node import Node
from tests.conftest import MR_DIR
from tests.peers import echoscu, free_port, port_open, storescu, wait_for

pytestmark = [pytest.mark.network]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A started Node with a folder destination and no rules; shut down after the test."""
    config = parse_config({
        "node": {"ae_title": "DICOMNODE", "host": "127.0.0.1", "port": free_port(),
                 "storage_dir": str(tmp_path / "var"), "min_free_disk_mb": 1},
        "http": {"port": free_port()},
        "destinations": [{"name": "outbox", "type": "folder", "path": str(tmp_path / "out")}],
    })
    started = Node(config)
    started.start()
    yield started
    started.shutdown()  # a second call after a test's own does nothing


def _get(node: Node, path: str) -> tuple[int, bytes]:
    assert node.http is not None
    connection = http.client.HTTPConnection("127.0.0.1", node.http.port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _sample(metrics: bytes, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def test_a_started_node_answers_dicom_and_http_and_reports_healthy(node: Node) -> None:
    assert echoscu(node.config.node.port).returncode == 0
    status, body = _get(node, "/healthz")
    health = json.loads(body)
    assert status == 200 and health["ok"] is True
    assert health["checks"] == {"scp": True, "router": True, "workers": True,
                                "forwarders": True, "index": True}
    assert len(node.workers) == node.config.worker.workers and len(node.forwarders) == 1


def test_a_received_instance_is_counted_in_the_metrics(node: Node, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted(MR_DIR.glob("*.dcm"))[0], folder)
    storescu(folder, node.config.node.port)
    received = wait_for(lambda: _sample(_get(node, "/metrics")[1],
                                        "dicomnode_instances_received_total"), 30,
                        "the received instance in /metrics")
    assert received == 1.0
    assert _sample(node.metrics.render(), "dicomnode_series", state="receiving") == 1.0


def test_shutdown_closes_every_port_and_stops_every_thread(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    assert node.http is not None
    dicom_port, http_port = node.config.node.port, node.http.port
    assert port_open(dicom_port) and port_open(http_port)
    caplog.set_level(logging.INFO, logger="dicomnode.node")
    node.shutdown()
    assert not port_open(dicom_port) and not port_open(http_port)
    assert not any(t.is_alive() for t in (*node.workers, *node.forwarders, node.router))
    assert node.health()["checks"]["scp"] is False
    stopped = [r for r in caplog.records if r.getMessage() == "node_stopped"]
    assert [r.fields["unfinished"] for r in stopped] == ["none"]  # type: ignore[attr-defined]


def test_shutdown_after_a_stop_request_still_closes_and_a_second_call_is_a_no_op(
        node: Node, caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM's handler only sets ``stopping``; ``run`` then calls ``shutdown``, which must
    still close everything, and a later call must neither raise nor log a second stop."""
    assert node.http is not None
    dicom_port = node.config.node.port
    caplog.set_level(logging.INFO, logger="dicomnode.node")
    node.stopping.set()  # what the signal handler does
    node.shutdown()
    assert not port_open(dicom_port)
    node.shutdown()
    assert [r.getMessage() for r in caplog.records].count("node_stopped") == 1
