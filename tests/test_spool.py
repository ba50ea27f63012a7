"""The spool's state machine: idempotent receive, routing, claims, deliveries, recovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.spool import Spool
from dicomnode.structure import InstanceHeader, parse_header
from tests.conftest import MR_DIR

SERIES = "1.2.826.0.1.3680043.10.3.1"


def _header(n: int, series: str = SERIES) -> InstanceHeader:
    return InstanceHeader(f"{series}.{n}", "1.2.840.10008.5.1.4.1.1.4", series,
                          "1.2.826.0.1.3680043.10.3.9", "MR", "1.2.840.10008.1.2.1")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    result = Spool(tmp_path / "var")
    yield result
    result.close()


def _state(spool: Spool) -> str:
    return spool.db.execute("SELECT state FROM series").fetchone()[0]


def test_same_instance_again_replaces_and_does_not_reopen(spool: Spool):
    assert spool.store_instance(b"one", _header(1), "MOD", now=100) is False
    spool.route(SERIES, [("r", "m", ("d",))], now=200)
    job = spool.claim_job("w", now=201)
    spool.finish_job(job, [("2.25.1", "1.2", Path("/x"))], now=202)
    assert spool.store_instance(b"two", _header(1), "MOD", now=300) is True
    assert spool.instance_path(SERIES, f"{SERIES}.1").read_bytes() == b"two"
    assert spool.db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 1
    assert _state(spool) == "sending"  # not re-opened, no second job
    assert spool.stable_series(0, now=10**6) == []


def test_new_instance_reopens_a_finished_series(spool: Spool):
    spool.store_instance(b"a", _header(1), "MOD", now=100)
    spool.route(SERIES, [("r", "m", ("d",))], now=200)
    spool.store_instance(b"b", _header(2), "MOD", now=300)
    assert _state(spool) == "receiving"
    assert spool.stable_series(30, now=320) == []
    assert spool.stable_series(30, now=331) == [SERIES]
    spool.route(SERIES, [("r", "m", ("d",))], now=331)
    assert tuple(spool.db.execute("SELECT COUNT(*), MAX(revision) FROM jobs").fetchone()) == (1, 2)


def test_unrouted_series_keeps_its_reason(spool: Spool):
    spool.store_instance(b"a", _header(1), "MOD", now=100)
    assert spool.route(SERIES, [], "no rule matches", now=200) == 0
    assert spool.series_list()[0]["reason"] == "no rule matches"
    assert spool.claim_job("w") is None


def test_claim_is_exclusive_and_recover_requeues(spool: Spool, tmp_path: Path):
    spool.store_instance(b"a", _header(1), "MOD", now=100)
    spool.route(SERIES, [("r1", "m", ("d",)), ("r2", "m", ("d",))], now=200)
    other = Spool(tmp_path / "var")
    first, second = spool.claim_job("w1"), other.claim_job("w2")
    assert {first.rule, second.rule} == {"r1", "r2"}
    assert spool.claim_job("w3") is None
    (spool.tmp_dir / ".tmp-half.part").write_bytes(b"partial")
    report = other.recover()
    assert report == {"requeued_jobs": 2, "removed_partial_files": 1, "reindexed_files": 0}
    assert spool.claim_job("w4") is not None
    other.close()


def test_deliveries_settle_the_job_and_series(spool: Spool):
    spool.store_instance(b"a", _header(1), "MOD", now=100)
    spool.route(SERIES, [("r", "m", ("pacs", "folder"))], now=200)
    job = spool.claim_job("w", now=201)
    spool.finish_job(job, [("2.25.1", "1.2", Path("/a")), ("2.25.2", "1.2", Path("/b"))],
                     now=202)
    assert spool.queue_depths() == {"pacs": 2, "folder": 2}
    pacs = spool.due_deliveries("pacs", 10, now=203)
    spool.mark_deliveries([(d, "sent", "", None) for d in pacs], now=204)
    assert _state(spool) == "sending"
    folder = spool.due_deliveries("folder", 10, now=205)
    spool.mark_deliveries([(folder[0], "sent", "", None),
                           (folder[1], "pending", "refused", 999.0)], now=206)
    assert spool.due_deliveries("folder", 10, now=500) == []
    assert spool.next_delivery_time("folder") == 999.0
    retry = spool.due_deliveries("folder", 10, now=1000)
    spool.mark_deliveries([(retry[0], "failed", "0xC000 refused", None)], now=1001)
    assert _state(spool) == "failed"
    status = spool.status()
    assert status["jobs"] == {"failed": 1}
    assert "0xC000" in status["failed_jobs"][0]["error"]
    assert spool.retry(now=1001.5) == 1
    assert _state(spool) == "sending"
    again = spool.due_deliveries("folder", 10, now=1002)
    spool.mark_deliveries([(again[0], "sent", "", None)], now=1003)
    assert _state(spool) == "done"


def test_purge_respects_retention(spool: Spool):
    spool.store_instance(b"a", _header(1), "MOD", now=100)
    spool.route(SERIES, [], "no rule matches", now=200)
    assert spool.purge(retention_hours=1, now=200 + 3599) == {"series": 0, "jobs": 0}
    assert spool.purge(retention_hours=1, now=200 + 3601) == {"series": 1, "jobs": 0}
    assert not spool.instance_path(SERIES, f"{SERIES}.1").exists()


def test_files_whose_index_rows_were_lost_are_reindexed(spool: Spool):
    """Power loss after fsync of the file but before the WAL reached the disk."""
    source = sorted(MR_DIR.glob("*.dcm"))[0]
    data = source.read_bytes()
    header = parse_header(data)
    path = spool.instance_path(header.series_uid, header.sop_uid)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    assert spool.recover()["reindexed_files"] == 1
    row = spool.db.execute("SELECT series_uid, path FROM instances").fetchone()
    assert tuple(row) == (header.series_uid, str(path))
    assert _state(spool) == "receiving"
    assert spool.recover()["reindexed_files"] == 0


def test_a_failed_rename_after_the_row_puts_the_spool_back(spool: Spool,
                                                           monkeypatch: pytest.MonkeyPatch):
    """The receiver's path commits the row before the rename: when the rename then fails,
    a new instance leaves no row (nor an empty series) and a resent one keeps its earlier
    row and file, so nothing refused stays in the spool."""
    assert spool.store_instance(b"first", _header(1), "MOD", now=100, durable=False) is False
    before = [tuple(r) for r in spool.db.execute("SELECT * FROM instances").fetchall()]

    def no_room(source: str, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dicomnode.files.os.replace", no_room)
    for header, data in ((_header(1), b"second"), (_header(1, SERIES + ".7"), b"new")):
        with pytest.raises(OSError):
            spool.store_instance(data, header, "MOD", now=200, durable=False)
    assert [tuple(r) for r in spool.db.execute("SELECT * FROM instances").fetchall()] == before
    assert spool.instance_path(SERIES, f"{SERIES}.1").read_bytes() == b"first"
    assert [r[0] for r in spool.db.execute("SELECT series_uid FROM series")] == [SERIES]
    assert not list(spool.tmp_dir.iterdir())


def test_forget_instance_takes_a_new_instance_out(spool: Spool):
    spool.store_instance(b"refused", _header(3), "MOD", now=100, durable=False)
    spool.forget_instance(_header(3))
    assert spool.db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0
    assert spool.db.execute("SELECT COUNT(*) FROM series").fetchone()[0] == 0
    assert not spool.instance_path(SERIES, f"{SERIES}.3").exists()
