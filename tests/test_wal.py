"""The receiver's write-ahead log: framing, torn tails, group commit, replay after a crash."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode import wal as wal_module
from dicomnode.scp import Receiver
from dicomnode.spool import Spool
from dicomnode.structure import parse_header
from dicomnode.wal import WriteAheadLog, read_mark, read_segment, replay, segments
from tests.hostile.corpus import base, mr, part10
from tests.hostile.harness import SpoolChecker, status_of, store_event
from tests.peers import wait_for


class SyncCounter:
    """An fdatasync that counts its calls (and can hold the first one until told)."""

    def __init__(self, hold_first_until: threading.Event | None = None) -> None:
        self.calls = 0
        self.hold = hold_first_until
        self._lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first and self.hold is not None:
            assert self.hold.wait(30), "the other appenders never came"
        os.fdatasync(fd)


@pytest.fixture
def wal(tmp_path: Path) -> Iterator[WriteAheadLog]:
    log = WriteAheadLog(tmp_path / "wal", lambda: None, segment_bytes=2**20,
                        datasync=SyncCounter())
    log.start()
    yield log
    log.close()


def _crash(receiver: Receiver) -> None:
    """What kill -9 leaves: the checkpoint stops, nothing is sealed or retired."""
    receiver.wal._stop.set()
    receiver.wal._wake.set()
    if receiver.wal._thread is not None:
        receiver.wal._thread.join()


def test_records_read_back_as_written(wal: WriteAheadLog):
    written = [(os.urandom(1000 + n), f"AET{n}", 1000.0 + n) for n in range(5)]
    for data, aet, at in written:
        wal.wait_durable(wal.append(data, aet, at))
    read = [(r.data, r.calling_aet, r.received_at) for r in replay(wal.folder)]
    assert read == written


def test_records_roll_over_segments_and_big_records_get_their_own(wal: WriteAheadLog):
    sizes = [400_000, 400_000, 400_000, 3 * 2**20, 10]  # 1 MiB segments
    for n, size in enumerate(sizes):
        wal.wait_durable(wal.append(bytes([n]) * size, "A", 0.0))
    assert [len(r.data) for r in replay(wal.folder)] == sizes
    assert len(segments(wal.folder)) >= 3


def test_a_torn_tail_is_ignored(wal: WriteAheadLog):
    """The record being written when the node died never got Success: it is dropped, and
    nothing after it is read (a sync covers a prefix of the log)."""
    for n in range(3):
        wal.wait_durable(wal.append(bytes([n + 1]) * 5000, "A", 0.0))
    ((segment_id, path),) = segments(wal.folder)
    records = list(read_segment(path, segment_id))
    last = records[-1]
    with path.open("r+b") as handle:  # flip one byte inside the last record's data
        handle.seek(last.offset + 100)
        byte = handle.read(1)
        handle.seek(last.offset + 100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert [r.data[0] for r in read_segment(path, segment_id)] == [1, 2]
    with path.open("r+b") as handle:  # a frame cut short: its header says more than is there
        handle.truncate(last.offset + 40)
    assert [r.data[0] for r in read_segment(path, segment_id)] == [1, 2]


def test_a_recycled_segment_shows_none_of_its_old_records(tmp_path: Path):
    log = WriteAheadLog(tmp_path / "wal", lambda: None, segment_bytes=2**20)
    log.start()
    for n in range(4):
        ticket = log.append(bytes([n]) * 300_000, "A", 0.0)
        log.wait_durable(ticket)
        log.settle(ticket)
    assert log.checkpoint(seal=True) >= 1  # retired segments become spares, old bytes kept
    assert list(tmp_path.joinpath("wal").glob("spare-*.seg"))
    ticket = log.append(b"fresh", "A", 0.0)  # a recycled spare: old records under an old id
    log.wait_durable(ticket)
    assert [r.data for r in replay(log.folder)] == [b"fresh"]
    log.settle(ticket)
    log.close()
    assert log.pending() == 0 and not segments(log.folder)


def test_group_commit_one_sync_covers_concurrent_records(tmp_path: Path):
    """16 associations at once: every record durable before its waiter returns, with fewer
    fdatasync calls than records (the first sync is held until all have appended, so the
    second covers everyone who arrived meanwhile)."""
    threads_count = 16
    all_appended = threading.Event()
    counter = SyncCounter(hold_first_until=all_appended)
    log = WriteAheadLog(tmp_path / "wal", lambda: None, segment_bytes=2**22, datasync=counter)
    log.start()
    appended = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def association(n: int) -> None:
        try:
            ticket = log.append(bytes([n]) * 20_000, f"A{n}", float(n))
            with lock:
                appended.append(ticket)
                if len(appended) == threads_count:
                    all_appended.set()
            log.wait_durable(ticket)
            assert log._durable >= ticket.seq
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=association, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(appended) == threads_count
    assert counter.calls <= 2 < threads_count
    assert sorted(r.data[0] for r in replay(log.folder)) == list(range(threads_count))
    log.close()


def test_a_failed_sync_fails_every_waiter_it_covered_and_is_not_retried(tmp_path: Path):
    """Records a failed sync covered fail, now and later; the flusher waits for new records
    instead of retrying them in a loop, and a new record gets a sync of its own."""
    calls = []

    def broken(fd: int) -> None:
        calls.append(fd)
        raise OSError(5, "Input/output error")

    log = WriteAheadLog(tmp_path / "wal", lambda: None, segment_bytes=2**20, datasync=broken)
    log.start()
    first = log.append(b"x" * 100, "A", 0.0)
    with pytest.raises(OSError):
        log.wait_durable(first)
    with pytest.raises(OSError):
        log.wait_durable(first)  # not acknowledged later by someone else's sync either
    threading.Event().wait(0.3)  # time for a spinning flusher to show itself
    assert len(calls) == 1
    second = log.append(b"y" * 100, "A", 0.0)
    with pytest.raises(OSError):
        log.wait_durable(second)
    assert len(calls) == 2


def test_the_flusher_syncs_a_record_before_anyone_waits_for_it(tmp_path: Path):
    """The sync starts at the append (it overlaps the spool write), not at wait_durable."""
    synced = threading.Event()

    def datasync(fd: int) -> None:
        os.fdatasync(fd)
        synced.set()

    log = WriteAheadLog(tmp_path / "wal", lambda: None, segment_bytes=2**20, datasync=datasync)
    log.start()
    ticket = log.append(b"x" * 100, "A", 0.0)
    assert synced.wait(10), "no sync started without a waiter"
    wait_for(lambda: log.syncs == 1, 10, "the flusher to count its sync")
    log.wait_durable(ticket)  # already covered: no second sync
    assert log.syncs == 1
    log.settle(ticket)
    log.close()


# -- the receiver: replay after a crash ----------------------------------------------------

def _instances(storage: Path) -> dict[str, bytes]:
    spool = Spool(storage)
    try:
        rows = spool.db.execute("SELECT sop_uid, path FROM instances").fetchall()
    finally:
        spool.close()
    return {r[0]: Path(r[1]).read_bytes() for r in rows}


def test_replay_restores_what_the_spool_lost_and_nothing_twice(tmp_path: Path):
    parts = [base(f"wal_replay_{n}") for n in range(4)]
    receiver = Receiver(tmp_path, min_free_disk_mb=0)
    for part in parts:
        assert status_of(receiver.handle_store(store_event(part))) == 0x0000
    before = _instances(tmp_path)
    _crash(receiver)
    # The crash took one spool file and one index row (never synced): the log has them.
    lost_uid = sorted(before)[1]
    spool = Spool(tmp_path)
    (lost_path,) = spool.db.execute("SELECT path FROM instances WHERE sop_uid = ?",
                                    (lost_uid,)).fetchone()
    spool.db.execute("DELETE FROM instances WHERE sop_uid = ?", (lost_uid,))
    spool.close()
    Path(lost_path).unlink()

    again = Receiver(tmp_path, min_free_disk_mb=0)
    assert again.recovered == {"wal_records": 4, "wal_restored": 1, "instances_dropped": 0,
                               "instances_repaired": 0}
    assert _instances(tmp_path) == before  # every instance, byte for byte, once
    assert SpoolChecker(tmp_path).problems() == []
    assert not list(replay(tmp_path / "spool" / "wal"))  # replayed segments are retired
    _crash(again)
    third = Receiver(tmp_path, min_free_disk_mb=0)  # nothing left to replay
    assert third.recovered["wal_records"] == third.recovered["wal_restored"] == 0
    assert _instances(tmp_path) == before
    third.close()


def test_replay_is_idempotent_and_the_last_copy_of_a_uid_wins(tmp_path: Path):
    first = part10(mr("wal_dup", SeriesDescription="first"))
    second = part10(mr("wal_dup", SeriesDescription="second"))
    assert first.data != second.data
    receiver = Receiver(tmp_path, min_free_disk_mb=0)
    for part in (first, second):
        assert status_of(receiver.handle_store(store_event(part))) == 0x0000
    _crash(receiver)
    wal_dir = tmp_path / "spool" / "wal"
    saved = {path.name: path.read_bytes() for _, path in segments(wal_dir)}
    # The spool lost the replacement: it holds the first copy again.
    (uid, data), = _instances(tmp_path).items()
    (path,) = (tmp_path / "spool" / "series").rglob("*.dcm")
    path.write_bytes(data.replace(b"second", b"first\0"))
    again = Receiver(tmp_path, min_free_disk_mb=0)
    assert again.recovered["wal_restored"] == 1
    assert _instances(tmp_path) == {uid: data}
    _crash(again)
    for name, content in saved.items():  # a crash during recovery: the same log again
        (wal_dir / name).write_bytes(content)
    third = Receiver(tmp_path, min_free_disk_mb=0)
    assert (third.recovered["wal_records"], third.recovered["wal_restored"]) == (2, 0)
    assert _instances(tmp_path) == {uid: data}
    assert SpoolChecker(tmp_path).problems() == []
    third.close()


# -- refused instances and cut files ----------------------------------------------------

def _receiver(storage: Path, **kwargs: object) -> Receiver:
    return Receiver(storage, min_free_disk_mb=0, **kwargs)  # type: ignore[arg-type]


def test_an_instance_whose_index_fails_is_refused_and_never_replayed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The record is in the log when the index commit fails: 0xA700, the spool unchanged,
    and the abort record keeps a replay after a crash from storing it."""
    kept, refused = base("wal_refused_kept"), base("wal_refused_index")
    receiver = _receiver(tmp_path)
    assert status_of(receiver.handle_store(store_event(kept))) == 0x0000
    real = Spool._index_row

    def full(self: Spool, *args: object, **kwargs: object) -> object:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Spool, "_index_row", full)
    assert status_of(receiver.handle_store(store_event(refused))) == 0xA700
    monkeypatch.setattr(Spool, "_index_row", real)
    before = _instances(tmp_path)
    assert len(before) == 1 and len(list((tmp_path / "spool" / "series").rglob("*.dcm"))) == 1
    records = [r for _, path in segments(receiver.wal_dir) for r in read_segment(path)]
    assert [r.aborts is not None for r in records] == [False, False, True]
    _crash(receiver)
    again = _receiver(tmp_path)
    assert again.recovered["wal_records"] == 1  # the refused record is not replayed
    assert _instances(tmp_path) == before
    assert SpoolChecker(tmp_path).problems() == []
    again.close()


def test_an_instance_whose_sync_fails_is_taken_out_again(tmp_path: Path):
    """fdatasync fails after the row and file went in: 0xA700, the new instance leaves the
    spool again and a replay after a crash does not bring it back."""
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    receiver = _receiver(tmp_path, datasync=broken)
    result = receiver.handle_store(store_event(base("wal_sync_fails")))
    assert status_of(result) == 0xA700
    assert _instances(tmp_path) == {}
    assert not list((tmp_path / "spool" / "series").rglob("*.dcm"))
    _crash(receiver)
    again = _receiver(tmp_path)
    assert again.recovered["wal_restored"] == 0
    assert _instances(tmp_path) == {}
    assert SpoolChecker(tmp_path).problems() == []
    again.close()


def _tear_last_record(wal_dir: Path) -> None:
    """What a power loss leaves of the last record whose sync never came: a torn frame."""
    ((segment_id, path),) = segments(wal_dir)
    last = list(read_segment(path, segment_id))[-1]
    with path.open("r+b") as handle:
        handle.seek(last.offset + 200)
        byte = handle.read(1)
        handle.seek(last.offset + 200)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_row_pointing_to_a_cut_file_is_dropped_at_recovery(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Power loss: the index row of an instance that never got Success survived, its file was
    cut short and its log record torn. Recovery drops row and file with a log line; a
    complete file whose row lost its last update is indexed again; the rest is untouched."""
    parts = [base(f"wal_cut_{n}") for n in range(3)]
    receiver = _receiver(tmp_path)
    for part in parts:
        assert status_of(receiver.handle_store(store_event(part))) == 0x0000
    _crash(receiver)
    before = _instances(tmp_path)
    spool = Spool(tmp_path)
    rows = {r[0]: (Path(r[1]), r[2]) for r in
            spool.db.execute("SELECT sop_uid, path, size FROM instances").fetchall()}
    cut_uid = parse_header(parts[2].data).sop_uid
    cut_path, size = rows[cut_uid]
    with cut_path.open("r+b") as handle:
        handle.truncate(size // 2)
    _tear_last_record(tmp_path / "spool" / "wal")
    stale_uid = parse_header(parts[0].data).sop_uid
    spool.db.execute("UPDATE instances SET size = size - 10 WHERE sop_uid = ?", (stale_uid,))
    spool.close()
    with caplog.at_level(logging.WARNING):
        again = _receiver(tmp_path)
    assert again.recovered["instances_dropped"] == 1
    assert again.recovered["instances_repaired"] == 1
    assert again.recovered["wal_restored"] == 0  # the two acknowledged copies were intact
    assert "instance_dropped_at_recovery" in caplog.text and "file damaged" in caplog.text
    assert "instance_repaired_at_recovery" in caplog.text
    del before[cut_uid]
    assert _instances(tmp_path) == before
    assert not cut_path.exists()
    assert SpoolChecker(tmp_path).problems() == []
    again.close()


def test_a_clean_close_moves_the_mark_so_old_rows_are_not_read_again(tmp_path: Path):
    receiver = _receiver(tmp_path)
    assert status_of(receiver.handle_store(store_event(base("wal_mark")))) == 0x0000
    receiver.close()
    spool = Spool(tmp_path)
    (received_at,) = spool.db.execute("SELECT received_at FROM instances").fetchone()
    spool.close()
    mark = read_mark(tmp_path / "spool" / "wal")
    assert mark is not None and mark > received_at


def test_a_burst_retires_segments_as_they_fill_not_once_a_second(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A roll wakes the checkpoint, so a burst holds about two segments on the disk, not the
    whole burst twice (spool + log) until the next timed round; the spare and the current
    segment's unused tail are what the log reports as reserved (counted free by the node)."""
    monkeypatch.setattr(wal_module, "CHECKPOINT_SECONDS", 3600.0)  # only the wake-up is left
    log = WriteAheadLog(tmp_path / "wal", lambda: None, segment_bytes=2**20)
    for n in range(20):  # ~6 MiB through 1 MiB segments
        ticket = log.append(bytes([n]) * 300_000, "A", 0.0)
        log.wait_durable(ticket)
        log.settle(ticket)
    wait_for(lambda: len(segments(log.folder)) <= 2, 30, "sealed segments retired")
    spares = sum(p.stat().st_size for p in log.folder.glob("spare-*.seg"))
    current = log._current
    assert current is not None
    assert log.reserved_bytes() == current.size - current.used + spares
    log.close()
    assert log.pending() == 0 and not segments(log.folder)
