"""The receiver's write-ahead log: framing, torn tails, group commit, replay after a crash."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.scp import Receiver
from dicomnode.spool import Spool
from dicomnode.wal import WriteAheadLog, read_segment, replay, segments
from tests.hostile.corpus import base, mr, part10
from tests.hostile.harness import SpoolChecker, status_of, store_event


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


def test_a_failed_sync_fails_every_waiter_it_covered(tmp_path: Path):
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    log = WriteAheadLog(tmp_path / "wal", lambda: None, segment_bytes=2**20, datasync=broken)
    log.start()
    ticket = log.append(b"x" * 100, "A", 0.0)
    with pytest.raises(OSError):
        log.wait_durable(ticket)
    with pytest.raises(OSError):
        log.wait_durable(ticket)  # not acknowledged later by someone else's sync either


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
    assert again.recovered == {"wal_records": 4, "wal_restored": 1}
    assert _instances(tmp_path) == before  # every instance, byte for byte, once
    assert SpoolChecker(tmp_path).problems() == []
    assert not list(replay(tmp_path / "spool" / "wal"))  # replayed segments are retired
    _crash(again)
    third = Receiver(tmp_path, min_free_disk_mb=0)  # nothing left to replay
    assert third.recovered == {"wal_records": 0, "wal_restored": 0}
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
    assert third.recovered == {"wal_records": 2, "wal_restored": 0}
    assert _instances(tmp_path) == {uid: data}
    assert SpoolChecker(tmp_path).problems() == []
    third.close()
