"""The durable spool: received instances and derived objects on disk, their states in SQLite.

Every arrow of the flow (SPEC section 1) is a row update in one SQLite database in WAL mode,
so a crash at any point loses nothing: on restart, ``recover`` puts interrupted work back in
the queue, and deterministic derived UIDs make re-done work replace rather than duplicate.
The job table is the seam where workers on other machines would claim work.

Each thread opens its own ``Spool`` (SQLite connections are not shared between threads).
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dicomnode.errors import InputRejected
from dicomnode.files import atomic_write_bytes, safe_name
from dicomnode.structure import InstanceHeader, parse_header

SERIES_STATES = (
    "receiving", "stable", "queued", "processing", "derived", "sending", "done", "failed",
    "unrouted",
)
JOB_STATES = ("queued", "processing", "sending", "done", "failed")
DELIVERY_STATES = ("pending", "sent", "failed")

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    revision INTEGER NOT NULL DEFAULT 1,
    routed_revision INTEGER NOT NULL DEFAULT 0,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_state ON series(state, last_received_at);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_aet TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid TEXT NOT NULL,
    rule TEXT NOT NULL,
    model TEXT NOT NULL,
    destinations TEXT NOT NULL,
    revision INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    UNIQUE(series_uid, rule)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    first_attempt_at REAL,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    UNIQUE(destination, sop_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(destination, state, next_attempt_at);
"""


@dataclass(frozen=True)
class Job:
    id: int
    series_uid: str
    rule: str
    model: str
    destinations: tuple[str, ...]
    revision: int
    attempts: int


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    destination: str
    sop_uid: str
    sop_class_uid: str
    path: Path
    attempts: int
    first_attempt_at: float | None


class Spool:
    """Files under ``storage_dir`` and the SQLite index that says what state each is in."""

    def __init__(self, storage_dir: Path, shared: bool = False) -> None:
        """``shared``: the connection may be used from several threads (callers lock)."""
        self.root = Path(storage_dir)
        self.tmp_dir = self.root / "spool" / "tmp"
        self.series_dir = self.root / "spool" / "series"
        self.derived_dir = self.root / "derived"
        self.db_path = self.root / "index.sqlite"
        for folder in (self.tmp_dir, self.series_dir, self.derived_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None,
                                  check_same_thread=not shared)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # Success waits for the write-ahead log's fdatasync (dicomnode.wal), not for this index;
        # it may lose its last commits on power loss (never on a crash): recovery re-indexes.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- receiving -------------------------------------------------------------------------

    def instance_path(self, series_uid: str, sop_uid: str) -> Path:
        """Where an instance lives; names are escaped so no received value leaves the spool."""
        return self.series_dir / safe_name(series_uid) / f"{safe_name(sop_uid)}.dcm"

    def holds_instance(self, data: bytes, header: InstanceHeader) -> bool:
        """The instance is indexed at its path and the file there holds exactly ``data``
        (a write-ahead log replay leaves such an instance alone: replaying twice is a no-op)."""
        path = self.instance_path(header.series_uid, header.sop_uid)
        row = self.db.execute("SELECT path, size FROM instances WHERE sop_uid = ?",
                              (header.sop_uid,)).fetchone()
        if row is None or Path(row["path"]) != path or row["size"] != len(data):
            return False
        try:
            return path.read_bytes() == data
        except OSError:
            return False

    def store_instance(self, data: bytes, header: InstanceHeader, calling_aet: str,
                       now: float | None = None, durable: bool = True) -> bool:
        """Write the instance, then index it; True when it replaced an earlier copy.

        ``durable``: fsync the file and its folder before indexing (the receiver passes
        False: its write-ahead log holds the bytes durably, the checkpoint syncs the spool).
        Not durable, the row is committed before the rename, so an index that cannot be
        written leaves the spool as it was (the instance is refused, an earlier copy stays);
        a rename that then fails puts the row back.
        A new SOP Instance UID in a series re-opens the series (a new revision gets routed
        once stable); the same UID again only replaces the file and does not re-open it.
        """
        now = time.time() if now is None else now
        path = self.instance_path(header.series_uid, header.sop_uid)
        if durable:
            atomic_write_bytes(path, data, fsync=True, tmp_dir=self.tmp_dir)
            return self._index(header, path, len(data), calling_aet, now)
        old: list[dict | None] = []

        def commit() -> None:
            old.append(self._index_row(header, path, len(data), calling_aet, now))

        try:
            atomic_write_bytes(path, data, fsync=False, tmp_dir=self.tmp_dir,
                               before_rename=commit)
        except BaseException:
            if old:  # indexed, not renamed: the row goes back to what the file still is
                self._restore_row(header, old[0])
            raise
        self._remove_moved(old[0], path)
        return old[0] is not None

    def forget_instance(self, header: InstanceHeader) -> None:
        """Remove a newly stored instance again (refused after it was indexed)."""
        self._restore_row(header, None)
        self.instance_path(header.series_uid, header.sop_uid).unlink(missing_ok=True)

    def _restore_row(self, header: InstanceHeader, old: dict | None) -> None:
        """Put an instance's row back as it was before ``_index_row`` (None: no row), and
        drop a series row left without instances and never routed."""
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM instances WHERE sop_uid = ?", (header.sop_uid,))
                if old is not None:
                    db.execute(f"INSERT INTO instances ({', '.join(old)}) "
                               f"VALUES ({', '.join('?' * len(old))})", tuple(old.values()))
                db.execute("DELETE FROM series WHERE series_uid = ? AND state = 'receiving' "
                           "AND routed_revision = 0 AND NOT EXISTS (SELECT 1 FROM instances "
                           "WHERE series_uid = ?)", (header.series_uid, header.series_uid))
        except sqlite3.Error as exc:  # the restart's verification finds what is left
            log.error("instance_row_restore_failed sop_uid=%s reason=%s", header.sop_uid, exc)

    def _index(self, header: InstanceHeader, path: Path, size: int, calling_aet: str,
               now: float) -> bool:
        old = self._index_row(header, path, size, calling_aet, now)
        self._remove_moved(old, path)
        return old is not None

    @staticmethod
    def _remove_moved(old: dict | None, path: Path) -> None:
        """The earlier copy of a UID that moved to another series folder goes."""
        if old is not None and Path(old["path"]) != path:
            Path(old["path"]).unlink(missing_ok=True)

    def _index_row(self, header: InstanceHeader, path: Path, size: int, calling_aet: str,
                   now: float) -> dict | None:
        """Index one instance; returns its earlier row (every column) or None."""
        with self._transaction() as db:
            found = db.execute("SELECT * FROM instances WHERE sop_uid = ?",
                               (header.sop_uid,)).fetchone()
            old = dict(found) if found is not None else None
            db.execute(
                "INSERT INTO instances (sop_uid, series_uid, sop_class_uid, transfer_syntax, "
                "path, size, calling_aet, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(sop_uid) DO UPDATE SET series_uid = excluded.series_uid, "
                "sop_class_uid = excluded.sop_class_uid, "
                "transfer_syntax = excluded.transfer_syntax, path = excluded.path, "
                "size = excluded.size, calling_aet = excluded.calling_aet, "
                "received_at = excluded.received_at",
                (header.sop_uid, header.series_uid, header.sop_class_uid,
                 header.transfer_syntax, str(path), size, calling_aet, now),
            )
            series = db.execute("SELECT state FROM series WHERE series_uid = ?",
                                (header.series_uid,)).fetchone()
            is_new_instance = old is None or old["series_uid"] != header.series_uid
            if series is None:
                db.execute(
                    "INSERT INTO series (series_uid, study_uid, modality, state, "
                    "first_received_at, last_received_at, updated_at) "
                    "VALUES (?, ?, ?, 'receiving', ?, ?, ?)",
                    (header.series_uid, header.study_uid, header.modality, now, now, now),
                )
            elif is_new_instance:
                db.execute(
                    "UPDATE series SET state = 'receiving', reason = '', "
                    "revision = revision + 1, last_received_at = ?, updated_at = ? "
                    "WHERE series_uid = ?", (now, now, header.series_uid))
            else:
                db.execute("UPDATE series SET last_received_at = ? WHERE series_uid = ?",
                           (now, header.series_uid))
        return old

    # -- routing ---------------------------------------------------------------------------

    def stable_series(self, idle_seconds: float, now: float | None = None) -> list[str]:
        """Series with no new instance for ``idle_seconds``, not yet routed at this revision."""
        now = time.time() if now is None else now
        rows = self.db.execute(
            "SELECT series_uid FROM series WHERE state = 'receiving' AND last_received_at <= ? "
            "ORDER BY last_received_at", (now - idle_seconds,)).fetchall()
        return [r["series_uid"] for r in rows]

    def series_instance_paths(self, series_uid: str) -> list[Path]:
        rows = self.db.execute("SELECT path FROM instances WHERE series_uid = ? ORDER BY path",
                               (series_uid,)).fetchall()
        return [Path(r["path"]) for r in rows]

    def route(self, series_uid: str, jobs: Iterable[tuple[str, str, tuple[str, ...]]],
              unrouted_reason: str = "", now: float | None = None) -> int:
        """Queue one job per (rule, model, destinations); none -> the series is ``unrouted``.

        Re-routing a new revision re-queues the existing job of a rule (same UIDs result).
        """
        now = time.time() if now is None else now
        jobs = list(jobs)
        with self._transaction() as db:
            row = db.execute("SELECT state, revision FROM series WHERE series_uid = ?",
                             (series_uid,)).fetchone()
            if row is None or row["state"] != "receiving":
                return 0  # a newer instance or another router got there first
            revision = row["revision"]
            for rule, model, destinations in jobs:
                db.execute(
                    "INSERT INTO jobs (series_uid, rule, model, destinations, revision, state, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?) "
                    "ON CONFLICT(series_uid, rule) DO UPDATE SET model = excluded.model, "
                    "destinations = excluded.destinations, revision = excluded.revision, "
                    "state = 'queued', error = '', updated_at = excluded.updated_at",
                    (series_uid, rule, model, json.dumps(list(destinations)), revision, now,
                     now),
                )
            state = "queued" if jobs else "unrouted"
            db.execute(
                "UPDATE series SET state = ?, reason = ?, routed_revision = ?, updated_at = ? "
                "WHERE series_uid = ?", (state, unrouted_reason, revision, now, series_uid))
        return len(jobs)

    # -- working ---------------------------------------------------------------------------

    def claim_job(self, worker: str, now: float | None = None) -> Job | None:
        """Atomically take the oldest queued job (safe with many workers and processes)."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'processing', worker = ?, attempts = attempts + 1, "
                "started_at = ?, updated_at = ? WHERE id = ?", (worker, now, now, row["id"]))
            db.execute("UPDATE series SET state = 'processing', updated_at = ? "
                       "WHERE series_uid = ? AND state IN ('queued', 'processing')",
                       (now, row["series_uid"]))
        return Job(row["id"], row["series_uid"], row["rule"], row["model"],
                   tuple(json.loads(row["destinations"])), row["revision"],
                   row["attempts"] + 1)

    def job_dir(self, job_id: int) -> Path:
        return self.derived_dir / str(job_id)

    def finish_job(self, job: Job, derived: Iterable[tuple[str, str, Path]],
                   now: float | None = None) -> None:
        """Record the derived objects (sop uid, class uid, path) and one delivery each per
        destination; the job moves on to ``sending``."""
        now = time.time() if now is None else now
        derived = list(derived)
        with self._transaction() as db:
            for destination in job.destinations:
                for sop_uid, sop_class_uid, path in derived:
                    db.execute(
                        "INSERT INTO deliveries (job_id, destination, sop_uid, sop_class_uid, "
                        "path, state, next_attempt_at, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?) "
                        "ON CONFLICT(destination, sop_uid) DO UPDATE SET "
                        "job_id = excluded.job_id, path = excluded.path, state = 'pending', "
                        "attempts = 0, first_attempt_at = NULL, last_error = '', "
                        "next_attempt_at = excluded.next_attempt_at, "
                        "updated_at = excluded.updated_at",
                        (job.id, destination, sop_uid, sop_class_uid, str(path), now, now),
                    )
            db.execute("UPDATE jobs SET state = 'sending', finished_at = ?, updated_at = ? "
                       "WHERE id = ?", (now, now, job.id))
            self._refresh_series(db, job.series_uid, now)
        self.settle_jobs([job.id], now)

    def fail_job(self, job: Job, error: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = 'failed', error = ?, finished_at = ?, "
                       "updated_at = ? WHERE id = ?", (error[:2000], now, now, job.id))
            self._refresh_series(db, job.series_uid, now)

    # -- forwarding ------------------------------------------------------------------------

    def due_deliveries(self, destination: str, limit: int,
                       now: float | None = None) -> list[Delivery]:
        now = time.time() if now is None else now
        rows = self.db.execute(
            "SELECT * FROM deliveries WHERE destination = ? AND state = 'pending' "
            "AND next_attempt_at <= ? ORDER BY id LIMIT ?", (destination, now, limit)).fetchall()
        return [Delivery(r["id"], r["job_id"], r["destination"], r["sop_uid"],
                         r["sop_class_uid"], Path(r["path"]), r["attempts"],
                         r["first_attempt_at"]) for r in rows]

    def next_delivery_time(self, destination: str) -> float | None:
        row = self.db.execute(
            "SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE destination = ? "
            "AND state = 'pending'", (destination,)).fetchone()
        return row["t"]

    def mark_deliveries(self, outcomes: Iterable[tuple[Delivery, str, str, float | None]],
                        now: float | None = None) -> None:
        """Apply (delivery, new state, error, next attempt time) in one transaction."""
        now = time.time() if now is None else now
        outcomes = list(outcomes)
        if not outcomes:
            return
        with self._transaction() as db:
            for delivery, state, error, next_at in outcomes:
                db.execute(
                    "UPDATE deliveries SET state = ?, last_error = ?, attempts = attempts + 1, "
                    "first_attempt_at = COALESCE(first_attempt_at, ?), "
                    "next_attempt_at = COALESCE(?, next_attempt_at), updated_at = ? "
                    "WHERE id = ?",
                    (state, error[:2000], now, next_at, now, delivery.id),
                )
        self.settle_jobs({o[0].job_id for o in outcomes}, now)

    def settle_jobs(self, job_ids: Iterable[int], now: float | None = None) -> None:
        """A sending job whose deliveries are all sent is done; any failed one fails it."""
        now = time.time() if now is None else now
        with self._transaction() as db:
            for job_id in job_ids:
                row = db.execute("SELECT series_uid, state FROM jobs WHERE id = ?",
                                 (job_id,)).fetchone()
                if row is None or row["state"] != "sending":
                    continue
                counts = dict(db.execute(
                    "SELECT state, COUNT(*) FROM deliveries WHERE job_id = ? GROUP BY state",
                    (job_id,)).fetchall())
                if counts.get("pending"):
                    continue
                if counts.get("failed"):
                    errors = db.execute(
                        "SELECT destination, last_error FROM deliveries WHERE job_id = ? AND "
                        "state = 'failed' LIMIT 1", (job_id,)).fetchone()
                    message = f"delivery to {errors['destination']} failed: {errors['last_error']}"
                    db.execute("UPDATE jobs SET state = 'failed', error = ?, updated_at = ? "
                               "WHERE id = ?", (message, now, job_id))
                else:
                    db.execute("UPDATE jobs SET state = 'done', updated_at = ? WHERE id = ?",
                               (now, job_id))
                self._refresh_series(db, row["series_uid"], now)

    def _refresh_series(self, db: sqlite3.Connection, series_uid: str, now: float) -> None:
        """Derive the series state from its jobs (unless new instances re-opened it)."""
        states = [r[0] for r in db.execute(
            "SELECT state FROM jobs WHERE series_uid = ?", (series_uid,)).fetchall()]
        if not states:
            return
        if "processing" in states:
            state = "processing"
        elif "queued" in states:
            state = "queued"
        elif "sending" in states:
            state = "sending"
        elif "failed" in states:
            state = "failed"
        else:
            state = "done"
        db.execute("UPDATE series SET state = ?, updated_at = ? WHERE series_uid = ? "
                   "AND state != 'receiving'", (state, now, series_uid))

    # -- operations ------------------------------------------------------------------------

    def recover(self, now: float | None = None) -> dict[str, int]:
        """After a crash: interrupted jobs go back to the queue, half-written files away."""
        now = time.time() if now is None else now
        removed = 0
        for leftover in self.tmp_dir.glob("*"):
            leftover.unlink(missing_ok=True)
            removed += 1
        for leftover in self.derived_dir.glob("*/.tmp-*"):
            leftover.unlink(missing_ok=True)
            removed += 1
        reindexed = self._reindex_orphans(now)
        with self._transaction() as db:
            requeued = db.execute(
                "UPDATE jobs SET state = 'queued', worker = '', updated_at = ? "
                "WHERE state = 'processing'", (now,)).rowcount
            for row in db.execute("SELECT DISTINCT series_uid FROM jobs").fetchall():
                self._refresh_series(db, row[0], now)
        return {"requeued_jobs": requeued, "removed_partial_files": removed,
                "reindexed_files": reindexed}

    def verify_instances(self, since: float) -> dict[str, int]:
        """After a power loss: rows received at or after ``since`` (not yet covered by a spool
        sync) whose file is missing, cut short or unreadable are dropped, with their file; a
        complete file whose row disagrees (size, UIDs) is indexed again. One line each.

        What was acknowledged is restored afterwards by the write-ahead log's replay.
        """
        rows = self.db.execute("SELECT sop_uid, series_uid, path, size, calling_aet, "
                               "received_at FROM instances "
                               "WHERE received_at >= ?", (since,)).fetchall()
        dropped = repaired = 0
        for row in rows:
            path = Path(row["path"])
            try:
                data = path.read_bytes()
                header = parse_header(data)
                reason = None
            except FileNotFoundError:
                reason = "file missing"
            except OSError as exc:
                reason = f"file unreadable: {exc}"
            except InputRejected as exc:
                reason = f"file damaged: {exc}"
            if reason is None and (header.sop_uid != row["sop_uid"] or
                                   self.instance_path(header.series_uid, header.sop_uid) != path):
                reason = "file holds another instance"
            if reason is not None:
                with self._transaction() as db:
                    db.execute("DELETE FROM instances WHERE sop_uid = ?", (row["sop_uid"],))
                    db.execute("DELETE FROM series WHERE series_uid = ? AND state = 'receiving' "
                               "AND NOT EXISTS (SELECT 1 FROM instances WHERE series_uid = ?)",
                               (row["series_uid"], row["series_uid"]))
                if reason.startswith("file damaged"):
                    path.unlink(missing_ok=True)
                log.warning("instance_dropped_at_recovery sop_uid=%s size=%s reason=%s",
                            row["sop_uid"], row["size"], reason)
                dropped += 1
            elif len(data) != row["size"] or header.series_uid != row["series_uid"]:
                self._index(header, path, len(data), row["calling_aet"], row["received_at"])
                log.warning("instance_repaired_at_recovery sop_uid=%s size=%s indexed_size=%s",
                            row["sop_uid"], len(data), row["size"])
                repaired += 1
        return {"instances_dropped": dropped, "instances_repaired": repaired}

    def _reindex_orphans(self, now: float) -> int:
        """Index spool files whose index rows a power loss took (their bytes were fsync-ed)."""
        known = {r[0] for r in self.db.execute("SELECT path FROM instances").fetchall()}
        count = 0
        for path in self.series_dir.glob("*/*.dcm"):
            if str(path) in known:
                continue
            try:
                data = path.read_bytes()
                header = parse_header(data)
            except (OSError, InputRejected) as exc:
                log.warning("orphan_unreadable path=%s reason=%s", path, exc)
                continue
            if self.instance_path(header.series_uid, header.sop_uid) != path:
                continue
            self._index(header, path, len(data), "recovered", now)
            count += 1
        return count

    def retry(self, series_uid: str | None = None, now: float | None = None) -> int:
        """Re-queue failed jobs (of one series, or all) and their failed deliveries."""
        now = time.time() if now is None else now
        where, args = ("AND series_uid = ?", (series_uid,)) if series_uid else ("", ())
        with self._transaction() as db:
            failed = db.execute(f"SELECT id FROM jobs WHERE state = 'failed' {where}",
                                args).fetchall()
            count = 0
            for (job_id,) in failed:
                pending = db.execute(
                    "UPDATE deliveries SET state = 'pending', attempts = 0, "
                    "first_attempt_at = NULL, next_attempt_at = ?, updated_at = ? "
                    "WHERE job_id = ? AND state = 'failed'", (now, now, job_id)).rowcount
                new_state = "sending" if pending else "queued"
                db.execute("UPDATE jobs SET state = ?, error = '', updated_at = ? WHERE id = ?",
                           (new_state, now, job_id))
                count += 1
            for row in db.execute(f"SELECT DISTINCT series_uid FROM jobs WHERE 1 {where}",
                                  args).fetchall():
                self._refresh_series(db, row[0], now)
        return count

    def status(self) -> dict:
        """Counts by state and the last errors: what ``dicomnode status`` prints."""
        def grouped(sql: str) -> dict[str, int]:
            return {r[0]: r[1] for r in self.db.execute(sql).fetchall()}

        destinations: dict[str, dict] = {}
        for row in self.db.execute(
                "SELECT destination, state, COUNT(*) FROM deliveries GROUP BY 1, 2").fetchall():
            destinations.setdefault(row[0], {})[row[1]] = row[2]
        for row in self.db.execute(
                "SELECT destination, last_error, MAX(updated_at) FROM deliveries "
                "WHERE last_error != '' GROUP BY destination").fetchall():
            destinations.setdefault(row[0], {})["last_error"] = row[1]
        errors = [dict(r) for r in self.db.execute(
            "SELECT series_uid, rule, error, updated_at FROM jobs WHERE state = 'failed' "
            "ORDER BY updated_at DESC LIMIT 10").fetchall()]
        return {
            "series": grouped("SELECT state, COUNT(*) FROM series GROUP BY state"),
            "jobs": grouped("SELECT state, COUNT(*) FROM jobs GROUP BY state"),
            "instances": self.db.execute("SELECT COUNT(*) FROM instances").fetchone()[0],
            "destinations": destinations,
            "failed_jobs": errors,
        }

    def series_list(self, limit: int = 500) -> list[dict]:
        rows = self.db.execute(
            "SELECT s.series_uid, s.study_uid, s.modality, s.state, s.reason, "
            "s.first_received_at, s.last_received_at, s.updated_at, "
            "(SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid) AS instances "
            "FROM series s ORDER BY s.last_received_at DESC LIMIT ?", (limit,)).fetchall()
        result = []
        for row in rows:
            item = dict(row)
            item["jobs"] = [dict(j) for j in self.db.execute(
                "SELECT id, rule, model, state, attempts, error FROM jobs WHERE series_uid = ?",
                (row["series_uid"],)).fetchall()]
            result.append(item)
        return result

    def queue_depths(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute(
            "SELECT destination, COUNT(*) FROM deliveries WHERE state = 'pending' "
            "GROUP BY destination").fetchall()}

    def purge(self, retention_hours: float, now: float | None = None) -> dict[str, int]:
        """Delete originals of finished series and sent derived objects past retention.

        Derived objects stay until every destination acknowledged them (or gave up).
        """
        now = time.time() if now is None else now
        cutoff = now - retention_hours * 3600
        purged_series = 0
        rows = self.db.execute(
            "SELECT series_uid FROM series WHERE state IN ('done', 'unrouted', 'failed') "
            "AND updated_at < ?", (cutoff,)).fetchall()
        for (series_uid,) in rows:
            with self._transaction() as db:
                paths = [Path(r[0]) for r in db.execute(
                    "SELECT path FROM instances WHERE series_uid = ?", (series_uid,))]
                db.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
                db.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))
            for path in paths:
                path.unlink(missing_ok=True)
            shutil.rmtree(self.series_dir / safe_name(series_uid), ignore_errors=True)
            purged_series += 1
        jobs = self.db.execute(
            "SELECT id FROM jobs WHERE state IN ('done', 'failed') AND updated_at < ?",
            (cutoff,)).fetchall()
        for (job_id,) in jobs:
            with self._transaction() as db:
                db.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return {"series": purged_series, "jobs": len(jobs)}
