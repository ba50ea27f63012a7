"""The worker (dicomnode.worker): a claimed job through its model into derived files, or failed
with the reason; real series from tests/data in a real spool."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pydicom

from dicomnode.config import Config, parse_config
from dicomnode.spool import Job, Spool
from dicomnode.structure import parse_header
from dicomnode.worker import ModelCache, process_job
from tests.conftest import MR_DIR


def _claimed_job(tmp_path: Path, model: str = "bicubic-x2") -> tuple[Config, Spool, Job]:
    config = parse_config({
        "node": {"storage_dir": str(tmp_path / "var")},
        "destinations": [{"name": "out", "type": "folder", "path": str(tmp_path / "out")}],
        "rules": [{"name": "sr", "model": model, "destinations": ["out"]}],
    })
    spool = Spool(config.node.storage_dir)
    for path in sorted(MR_DIR.glob("*.dcm"))[15:17]:
        data = path.read_bytes()
        spool.store_instance(data, parse_header(data), "MODALITY", now=1.0)
    (series_uid,) = spool.stable_series(0, now=100.0)
    spool.route(series_uid, [("sr", model, ("out",))], "", now=100.0)
    job = spool.claim_job("worker-1", now=100.0)
    assert job is not None
    return config, spool, job


def _job_row(spool: Spool, job: Job) -> tuple[str, str]:
    return spool.db.execute("SELECT state, error FROM jobs WHERE id = ?", (job.id,)).fetchone()


def test_a_job_becomes_derived_files_and_deliveries(tmp_path: Path) -> None:
    config, spool, job = _claimed_job(tmp_path)
    assert process_job(config, spool, job, ModelCache(config.worker))
    assert tuple(_job_row(spool, job)) == ("sending", "")
    derived = sorted(spool.job_dir(job.id).glob("*.dcm"))
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
               for p in spool.series_instance_paths(job.series_uid)}
    assert len(derived) == 2
    for path in derived:
        ds = pydicom.dcmread(path)
        assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) in sources
        assert "bicubic-x2" in ds.DerivationDescription
    deliveries = spool.db.execute("SELECT COUNT(*) FROM deliveries WHERE job_id = ?",
                                  (job.id,)).fetchone()[0]
    assert deliveries == 2


def test_a_job_whose_rule_is_gone_fails_with_the_reason(tmp_path: Path) -> None:
    config, spool, job = _claimed_job(tmp_path)
    config = dataclasses.replace(config, rules=())
    assert not process_job(config, spool, job, ModelCache(config.worker))
    state, error = _job_row(spool, job)
    assert state == "failed" and "rule 'sr' is no longer in the configuration" in error


def test_a_model_that_cannot_load_fails_the_job_not_the_worker(tmp_path: Path) -> None:
    config, spool, job = _claimed_job(tmp_path, model="no-such-model")
    assert not process_job(config, spool, job, ModelCache(config.worker))
    state, error = _job_row(spool, job)
    assert state == "failed" and "'no-such-model'" in error and "models available" in error


def test_models_are_loaded_once_per_worker(tmp_path: Path) -> None:
    cache = ModelCache(parse_config({"node": {"storage_dir": str(tmp_path)}}).worker)
    assert cache.get("bicubic-x2") is cache.get("bicubic-x2")
