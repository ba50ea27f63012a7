"""The node end to end with real peers: DCMTK as the modality, Orthanc as the PACS."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pydicom
import pytest

from tests.conftest import MR_DIR, dciodvfy_errors
from tests.node.conftest import MR_COUNT, pacs_destination, sr_rule
from tests.peers import Orthanc, echoscu, storescu, wait_for

pytestmark = [pytest.mark.network]


def _derived_series(orthanc: Orthanc) -> list[dict]:
    return [s for s in orthanc.get("/series?expand")
            if "dicomnode" in s["MainDicomTags"].get("SeriesDescription", "")]


@pytest.mark.slow
def test_mr_series_enhanced_and_delivered_to_orthanc(orthanc: Orthanc, node_factory,
                                                     tmp_path: Path):
    node = node_factory(sr_rule(), pacs_destination(orthanc))
    node.start()
    assert echoscu(node.port).returncode == 0
    storescu(MR_DIR, node.port)
    wait_for(lambda: orthanc.instance_count() >= MR_COUNT, 90, "35 derived instances")
    wait_for(lambda: node.status().get("series", {}).get("done") == 1, 30, "series done")

    (series,) = _derived_series(orthanc)
    assert len(series["Instances"]) == MR_COUNT
    assert orthanc.instance_count() == MR_COUNT  # the derived series only, no originals
    tags = orthanc.get(f"/instances/{series['Instances'][0]}/tags?simplify")
    assert tags["ImageType"].startswith("DERIVED\\SECONDARY")
    assert tags["Rows"] == "512" and tags["SeriesDescription"].endswith("[dicomnode SRx2]")
    sample = tmp_path / "from-orthanc.dcm"
    sample.write_bytes(orthanc.instance_file(series["Instances"][0]))
    ds = pydicom.dcmread(io.BytesIO(sample.read_bytes()))
    source_uid = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
    source = next(p for p in MR_DIR.glob("*.dcm") if source_uid in p.name
                  or pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == source_uid)
    assert not (dciodvfy_errors(sample) - dciodvfy_errors(source))

    status = node.status()
    assert status["jobs"] == {"done": 1}
    assert status["destinations"]["pacs"]["sent"] == MR_COUNT
    code, body = node.http("/healthz")
    assert code == 200 and json.loads(body)["ok"]
    code, metrics = node.http("/metrics")
    assert "dicomnode_instances_received_total 35.0" in metrics
    assert 'dicomnode_instances_sent_total{destination="pacs"} 35.0' in metrics
    code, listing = node.http("/api/series")
    assert code == 200 and json.loads(listing)[0]["state"] == "done"
    assert "PatientName" not in listing and "crlab" not in listing  # no PHI
    assert node.stop() == 0
    log = node.log_text()
    assert "job_derived" in log
    assert "crlab" not in log and "HFS" not in log  # PatientID / PatientName never logged


@pytest.mark.slow
def test_two_rules_give_two_series_and_derived_input_is_not_reprocessed(
        orthanc: Orthanc, node_factory, tmp_path: Path):
    rules = sr_rule("sr-a", suffix=" [dicomnode A]") + sr_rule("sr-b", suffix=" [dicomnode B]")
    node = node_factory(rules, pacs_destination(orthanc))
    node.start()
    storescu(MR_DIR, node.port)
    wait_for(lambda: orthanc.instance_count() >= 2 * MR_COUNT, 120, "two derived series")
    assert len(_derived_series(orthanc)) == 2

    # Send one derived series back to the node, as a PACS forwarding everything would.
    back = tmp_path / "back"
    back.mkdir()
    series = _derived_series(orthanc)[0]
    for i, instance in enumerate(series["Instances"][:5]):
        (back / f"{i}.dcm").write_bytes(orthanc.instance_file(instance))
    storescu(back, node.port)
    wait_for(lambda: node.status().get("series", {}).get("unrouted") == 1, 30,
             "the returned derived series to be stored as unrouted")
    listing = json.loads(node.http("/api/series")[1])
    unrouted = [s for s in listing if s["state"] == "unrouted"]
    assert "produced by dicomnode" in unrouted[0]["reason"]
    assert node.status()["jobs"] == {"done": 2}
    assert orthanc.instance_count() == 2 * MR_COUNT
    node.stop()


def test_association_security(node_factory, tmp_path: Path):
    node = node_factory("", "", node_extra='allowed_calling_aets = ["MODALITY"]')
    node.start()
    assert echoscu(node.port, calling="MODALITY").returncode == 0
    assert echoscu(node.port, calling="INTRUDER").returncode != 0
    assert echoscu(node.port, called="SOMEONEELSE").returncode != 0
    assert "association_rejected" in node.log_text()
    node.stop()
