"""``[cluster] engine = "ray"`` with a real two-node Ray cluster on this machine.

The node sends its model calls to one replica per Ray node; a Ray node killed with SIGKILL
while a job runs costs a retry on the other replica, nothing else: the derived series reaches
Orthanc exactly once, with the UIDs and pixels of a local run. An unreachable cluster leaves
jobs queued, says so in ``dicomnode status`` and /metrics, and the node keeps receiving.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.conftest import MR_DIR
from tests.peers import NodeProcess, Orthanc, echoscu, free_port, storescu, wait_for
from tests.ray_cluster import RayCluster, ray_available

pytestmark = [
    pytest.mark.network, pytest.mark.slow,
    pytest.mark.skipif(not ray_available(), reason="ray is not installed (the cluster extra)"),
]

MR_COUNT = 35
BATCH = 4  # 9 model calls for the 35 slices: the kill lands between the first and the last


def _rule(model: str, destination: str) -> str:
    return (f'[[rules]]\nname = "mr"\nmatch = {{ Modality = "MR" }}\nmodel = "{model}"\n'
            f'destinations = ["{destination}"]\n'
            'series_description_suffix = " [dicomnode]"\n')


def _folder(path: Path) -> str:
    return f'[[destinations]]\nname = "out"\ntype = "folder"\npath = "{path}"\n'


def _pacs(orthanc: Orthanc) -> str:
    return (f'[[destinations]]\nname = "pacs"\ntype = "dicom"\nae_title = "{orthanc.aet}"\n'
            f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n')


def _cluster(address: str) -> str:
    return f'[cluster]\nengine = "ray"\naddress = "{address}"\n'


def _node(workdir: Path, rules: str, destinations: str, cluster: str = "") -> NodeProcess:
    workdir.mkdir()
    node = NodeProcess(workdir, rules, destinations)
    text = node.config.read_text().replace("batch_size = 8", f"batch_size = {BATCH}")
    node.config.write_text(text + cluster)
    return node


def _cluster_status(node: NodeProcess) -> dict:
    return node.status().get("cluster", {})


@pytest.fixture
def same_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """One torch thread in the local node as in a Ray actor (Ray's default for actors):
    float sums split differently over threads differ in the last bits, which can flip a
    rounded pixel; with the same split both engines compute the same numbers."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for node in started:
        if node.process is not None and node.process.poll() is None:
            node.kill9()


@pytest.fixture
def ray_cluster() -> Iterator[RayCluster]:
    cluster = RayCluster(cpus_per_node=1)
    try:
        yield cluster
    finally:
        cluster.stop()


def _pixels_by_uid(datasets: list[pydicom.Dataset]) -> dict[str, tuple[str, np.ndarray]]:
    return {str(ds.SOPInstanceUID): (str(ds.SeriesInstanceUID), ds.pixel_array)
            for ds in datasets}


def test_ray_run_matches_local_and_survives_a_node_killed_mid_job(
        tmp_path: Path, same_arithmetic: None, nodes: list[NodeProcess],
        ray_cluster: RayCluster) -> None:
    # The reference: the same series through engine = "local".
    out = tmp_path / "local-out"
    local = _node(tmp_path / "local", _rule("mr-sr-x2", "out"), _folder(out))
    nodes.append(local)
    local.start()
    storescu(MR_DIR, local.port)
    wait_for(lambda: local.job_states() == ["done"], 600, "the local job to finish")
    expected = _pixels_by_uid([pydicom.dcmread(p) for p in out.rglob("*.dcm")])
    assert len(expected) == MR_COUNT
    assert local.stop() == 0

    ray_cluster.start_head()
    second = ray_cluster.add_node()
    orthanc = Orthanc(tmp_path / "orthanc")
    orthanc.start()
    try:
        node = _node(tmp_path / "ray", _rule("mr-sr-x2", "pacs"), _pacs(orthanc),
                     _cluster(ray_cluster.address))
        nodes.append(node)
        node.start()
        wait_for(lambda: _cluster_status(node).get("alive") == 2, 180,
                 "a model replica on each Ray node")
        storescu(MR_DIR, node.port)
        # Both replicas have answered a call and the job is still running: kill node 2.
        wait_for(lambda: node.job_states() == ["processing"]
                 and _cluster_status(node).get("calls", 0) >= 2, 600,
                 "two model calls answered while the job runs")
        assert ray_cluster.kill_node(second)
        wait_for(lambda: node.job_states() == ["done"], 600, "the job to finish on one node")
        wait_for(lambda: orthanc.instance_count() >= MR_COUNT, 60, "the derived series")

        status = node.status()
        cluster = status["cluster"]
        assert cluster["failovers"] >= 1  # a call did go to the dead node and was re-sent
        assert cluster["up"] and cluster["alive"] == 1
        assert status["jobs"] == {"done": 1}
        assert node.query("SELECT attempts FROM jobs") == [(1,)]  # claimed once, not re-run
        assert status["destinations"]["pacs"]["sent"] == MR_COUNT  # each instance sent once
        uids = orthanc.sop_instance_uids()
        assert len(uids) == MR_COUNT and set(uids) == set(expected)
        received = _pixels_by_uid([
            pydicom.dcmread(io.BytesIO(orthanc.instance_file(i["ID"])))
            for i in orthanc.get("/instances?expand")])
        for uid, (series_uid, pixels) in expected.items():
            assert received[uid][0] == series_uid
            assert np.array_equal(received[uid][1], pixels), uid
        _code, metrics = node.http("/metrics")
        assert "dicomnode_cluster_up 1.0" in metrics
        assert 'dicomnode_cluster_replicas{state="down"} 1.0' in metrics
        assert node.stop() == 0
        assert "replica_lost" in node.log_text()
    finally:
        orthanc.stop()


def test_unreachable_cluster_leaves_jobs_queued_then_runs_them(
        tmp_path: Path, nodes: list[NodeProcess], ray_cluster: RayCluster) -> None:
    out = tmp_path / "out"
    node = _node(tmp_path / "node", _rule("bicubic-x2", "out"), _folder(out),
                 _cluster(ray_cluster.address))  # nothing listens there yet
    nodes.append(node)
    node.start()
    storescu(MR_DIR, node.port)
    wait_for(lambda: node.job_states() == ["queued"], 60, "the job to be queued")
    wait_for(lambda: "nothing answers" in _cluster_status(node).get("reason", ""), 60,
             "the bridge to report the unreachable address")

    status = node.status()
    assert status["jobs"] == {"queued": 1}  # not failed, not claimed
    assert status["cluster"]["up"] is False
    text = node.cli("status")
    assert "cluster: ray at" in text.stdout and "DOWN" in text.stdout
    code, metrics = node.http("/metrics")
    assert code == 200 and "dicomnode_cluster_up 0.0" in metrics
    code, health = node.http("/healthz")
    assert code == 200 and json.loads(health)["cluster"]["up"] is False
    assert echoscu(node.port).returncode == 0  # the node keeps receiving

    # The cluster comes up at that address: the queued job runs, nothing was lost.
    ray_cluster.start_head()
    wait_for(lambda: node.job_states() == ["done"], 300, "the queued job to run")
    assert len(list(out.rglob("*.dcm"))) == MR_COUNT
    assert node.stop() == 0


def test_check_config_names_the_extra_and_the_unreachable_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dicomnode.config import parse_config
    from dicomnode.errors import ConfigError

    port = free_port()
    node = _node(tmp_path / "node", _rule("bicubic-x2", "out"), _folder(tmp_path / "out"),
                 _cluster(f"127.0.0.1:{port}"))
    result = node.cli("check-config")
    assert result.returncode == 0
    assert f"nothing answers at 127.0.0.1:{port}" in result.stderr

    with pytest.raises(ConfigError) as bad:
        parse_config({"cluster": {"engine": "spark", "address": "head"}})
    assert "cluster.engine: expected one of local, ray" in str(bad.value)
    assert "cluster.address: expected \"auto\"" in str(bad.value)
    monkeypatch.setattr("dicomnode.config.ray_installed", lambda: False)
    with pytest.raises(ConfigError) as missing:
        parse_config({"cluster": {"engine": "ray"}})
    assert "pip install 'dicomnode[cluster]'" in str(missing.value)
    shutil.rmtree(tmp_path / "node")
