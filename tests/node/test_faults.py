"""Crashes, outages, refusals and hostile associations: nothing lost, nothing duplicated."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from tests.conftest import MR_DIR
from tests.fault_record import record
from tests.node.conftest import MR_COUNT, pacs_destination, sr_rule
from tests.peers import Orthanc, storescu, wait_for

pytestmark = [pytest.mark.network]


def denoise_rule() -> str:
    return ('[[rules]]\nname = "mr-dn"\nmatch = { Modality = "MR" }\nmodel = "nlm-denoise"\n'
            'destinations = ["pacs"]\n')


def _assert_exactly_once(orthanc: Orthanc, node, fault: str) -> None:
    uids = orthanc.sop_instance_uids()
    received = node.query("SELECT COUNT(*) FROM instances")[0][0]
    record(fault, MR_COUNT, received, uids)
    assert len(uids) == MR_COUNT and len(set(uids)) == MR_COUNT
    assert received == MR_COUNT  # no received instance lost


def _processing(orthanc: Orthanc, node_factory):
    """A node with the MR series received and its denoising job in progress."""
    node = node_factory(denoise_rule(), pacs_destination(orthanc))
    node.start()
    storescu(MR_DIR, node.port)
    wait_for(lambda: "processing" in node.job_states(), 60, "the job to be processing",
             interval=0.01)
    return node


@pytest.mark.slow
def test_kill9_while_processing_then_restart(orthanc: Orthanc, node_factory):
    node = _processing(orthanc, node_factory)
    node.kill9()
    assert orthanc.instance_count() == 0
    node.start()
    wait_for(lambda: node.job_states() == ["done"], 120, "the job to finish after restart")
    _assert_exactly_once(orthanc, node, "kill -9 while a job is processing, restart")
    assert "requeued_jobs=1" in node.log_text()
    node.stop()


@pytest.mark.slow
def test_kill9_while_sending_then_restart(orthanc: Orthanc, node_factory):
    node = node_factory(sr_rule(), pacs_destination(orthanc))
    node.start()
    storescu(MR_DIR, node.port)
    wait_for(lambda: "sending" in node.job_states(), 60, "the job to be sending",
             interval=0.005)
    node.kill9()
    at_kill = orthanc.instance_count()
    assert at_kill < MR_COUNT
    node.start()
    wait_for(lambda: node.job_states() == ["done"], 120, "delivery after restart")
    _assert_exactly_once(orthanc, node, "kill -9 while a series is being sent, restart")
    node.stop()


@pytest.mark.slow
def test_pacs_outage_is_retried_with_backoff(orthanc: Orthanc, node_factory):
    node = node_factory(sr_rule(), pacs_destination(orthanc))
    node.start()
    orthanc.stop()
    storescu(MR_DIR, node.port)
    first = wait_for(lambda: node.query(
        "SELECT MIN(first_attempt_at) FROM deliveries WHERE attempts > 0")[0][0], 60,
        "a first failed delivery")
    wait_for(lambda: time.time() - first >= 30, 40, "30 s of outage")
    attempts = node.query("SELECT MAX(attempts) FROM deliveries")[0][0]
    assert 2 <= attempts <= 4  # 5 s, then 10 s, then 20 s: backoff, not a busy loop
    orthanc.start()
    wait_for(lambda: node.job_states() == ["done"], 90, "delivery after the outage")
    record("PACS down for 30 s", MR_COUNT, node.query("SELECT COUNT(*) FROM instances")[0][0],
           orthanc.sop_instance_uids(), note=f"{attempts} attempts during the outage")
    assert orthanc.instance_count() == MR_COUNT
    log = node.log_text()
    assert "batch_sent" in log and "cannot connect" in log and "retry_in=" in log
    metrics = node.http("/metrics")[1]
    assert 'dicomnode_send_failures_total{destination="pacs",kind="transient"}' in metrics
    node.stop()


def test_permanent_rejection_fails_at_once(tmp_path: Path, node_factory):
    strict = Orthanc(tmp_path / "strict", aet="ORTHANC", check_called_aet=True)
    strict.start()
    try:
        destination = pacs_destination(strict).replace('"ORTHANC"', '"NOTORTHANC"')
        node = node_factory(sr_rule(), destination)
        node.start()
        storescu(MR_DIR, node.port)
        wait_for(lambda: node.job_states() == ["failed"], 60, "the job to fail")
        attempts = node.query("SELECT MAX(attempts) FROM deliveries")[0][0]
        assert attempts == 1  # permanent: not retried
        status = node.cli("status")
        assert "rejected permanently" in status.stdout
        assert node.cli("retry", "--failed").stdout.startswith("re-queued 1")
        node.stop()
    finally:
        strict.stop()


def _send_raw(port: int, ds: Dataset) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _tiny_mr(sop_uid: str, series_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.2.1"
    ds.Modality = "MR"
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = b"\x00\x01" * 4
    return ds


def test_path_traversal_uid_stays_in_the_spool(node_factory, tmp_path: Path):
    node = node_factory("", "")
    node.start()
    previous = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    try:
        status = _send_raw(node.port, _tiny_mr("../../../../x", "../../escape"))
    finally:
        pydicom_config.settings.writing_validation_mode = previous
    assert status == 0x0000
    spool = (node.workdir / "var" / "spool").resolve()
    (path,) = [Path(p) for (p,) in node.query("SELECT path FROM instances")]
    assert path.resolve().is_relative_to(spool) and path.exists()
    assert not list(tmp_path.rglob("x")) and not list(tmp_path.rglob("x.dcm"))
    node.stop()


def test_disk_below_minimum_answers_a700_and_indexes_nothing(node_factory):
    node = node_factory("", "")
    node.config.write_text(node.config.read_text().replace("min_free_disk_mb = 1",
                                                           "min_free_disk_mb = 1000000000"))
    node.start()
    status = _send_raw(node.port, _tiny_mr("1.2.826.0.1.3680043.10.2.2",
                                            "1.2.826.0.1.3680043.10.2.3"))
    assert status == 0xA700
    assert node.query("SELECT COUNT(*) FROM instances")[0][0] == 0
    assert "store_refused" in node.log_text()
    node.stop()


def test_unparseable_dataset_gets_a_failure_status(node_factory):
    node = node_factory("", "")
    node.start()
    ds = _tiny_mr("1.2.826.0.1.3680043.10.2.4", "1.2.826.0.1.3680043.10.2.5")
    del ds.SeriesInstanceUID
    assert _send_raw(node.port, ds) == 0xC210
    ok = _tiny_mr("1.2.826.0.1.3680043.10.2.6", "1.2.826.0.1.3680043.10.2.7")
    assert _send_raw(node.port, ok) == 0x0000  # the node stays up for the next one
    assert "SeriesInstanceUID is missing" in node.log_text()
    node.stop()


@pytest.mark.slow
def test_sigterm_during_work_exits_cleanly_and_resumes(orthanc: Orthanc, node_factory):
    node = _processing(orthanc, node_factory)
    assert node.stop() == 0  # SIGTERM: stop accepting, finish or checkpoint, exit 0
    assert "node_stopped" in node.log_text()
    assert node.job_states() in (["sending"], ["done"])  # the job in flight was finished
    node.start()
    wait_for(lambda: node.job_states() == ["done"], 120, "the work to resume and finish")
    _assert_exactly_once(orthanc, node, "SIGTERM while processing, restart")
    node.stop()
