"""Receiving (SPEC section 4): the Storage and Verification SCP.

The C-STORE handler only saves: it appends the bytes as received to the write-ahead log
(``wal``), writes them to the spool and indexes them, and answers Success only once the log's
fdatasync covering them has returned. An instance refused after its append gets an abort
record, so a replay never brings back what the sender was told failed. It never decodes
pixels and never touches a model.
Domain problems become DICOM statuses here and nowhere else.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import shutil
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, pynetdicom_patches
from dicomnode.config import NodeConfig
from dicomnode.errors import InputRejected
from dicomnode.logs import event as log_event
from dicomnode.spool import Spool
from dicomnode.structure import InstanceHeader, parse_header, received_part10
from dicomnode.wal import (
    Ticket,
    WriteAheadLog,
    read_mark,
    replay,
    retire_replayed,
    syncfs,
    write_mark,
)

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210



def set_nodelay(assoc_event: evt.Event) -> None:
    """Nagle's algorithm costs ~45 ms per image with DCMTK peers: turn it off."""
    raw = getattr(getattr(assoc_event.assoc.dul, "socket", None), "socket", None)
    if raw is not None:
        with contextlib.suppress(OSError):  # the peer already closed: nothing to tune
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Receiver:
    """C-STORE/C-ECHO handlers bound to one spool folder; one Spool per association thread.

    Construction verifies the index rows a power loss may have cut and replays what a crash
    left in the write-ahead log; the log's checkpoint thread starts with the first instance,
    ``close`` stops it (a clean stop leaves no segment behind).
    """

    def __init__(self, storage_dir: Path, min_free_disk_mb: int,
                 on_stored: Callable[[], None] | None = None,
                 datasync: Callable[[int], None] = os.fdatasync) -> None:
        self.storage_dir = Path(storage_dir)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = min_free_disk_mb * 1024 * 1024
        self.on_stored = on_stored
        self._local = threading.local()
        # received_at of the stores between their clock read and their rename: a spool sync
        # covers every row received before the oldest of them (the checkpoint's mark).
        self._in_flight: dict[int, float] = {}
        self._in_flight_lock = threading.Lock()
        self._keys = itertools.count()
        self.wal_dir = self.storage_dir / "spool" / "wal"
        self.recovered = recover(self.storage_dir, self.wal_dir)
        self.wal = WriteAheadLog(self.wal_dir, self._sync_spool, datasync=datasync)

    def _sync_spool(self) -> None:
        """The checkpoint's step before segments retire: spool durable, then the mark."""
        with self._in_flight_lock:
            horizon = min(self._in_flight.values(), default=time.time())
        syncfs(self.storage_dir)
        write_mark(self.wal_dir, horizon)

    def close(self) -> None:
        self.wal.close()

    def _spool(self) -> Spool:
        spool = getattr(self._local, "spool", None)
        if spool is None:
            spool = self._local.spool = Spool(self.storage_dir)
        return spool

    def handle_store(self, event: evt.Event) -> Dataset | int:
        calling = event.assoc.requestor.ae_title
        requested_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:  # the log's spare and unused segment space is the node's own, ready for records
            free = shutil.disk_usage(self.storage_dir).free + self.wal.reserved_bytes()
        except OSError:
            free = 0  # the spool folder vanished or is unreadable: refuse, do not crash
        if free < self.min_free_bytes:
            log_event(log, "store_refused", logging.WARNING, sop_uid=requested_uid,
                      calling_aet=calling, status="0xA700", reason="disk below min_free_disk_mb",
                      free_mb=free // 2**20)
            return _status(STATUS_OUT_OF_RESOURCES, "Out of resources: spool disk is full")
        requested_class = str(event.request.AffectedSOPClassUID or "")
        try:
            data, header = received_part10(
                requested_class, requested_uid, str(event.context.transfer_syntax), calling,
                event.encoded_dataset(include_meta=False))
        except InputRejected as exc:
            log_event(log, "store_refused", logging.WARNING, sop_uid=requested_uid,
                      calling_aet=calling, status="0xC210", reason=str(exc))
            return _status(STATUS_CANNOT_UNDERSTAND, str(exc))
        reason = None
        if requested_uid and header.sop_uid != requested_uid:
            reason = "SOPInstanceUID differs from the C-STORE request's Affected SOP Instance UID"
        elif requested_class and header.sop_class_uid != requested_class:
            reason = "SOPClassUID differs from the C-STORE request's Affected SOP Class UID"
        if reason is not None:
            log_event(log, "store_refused", logging.WARNING, sop_uid=requested_uid,
                      calling_aet=calling, status="0xA900", reason=reason)
            return _status(STATUS_DATASET_MISMATCH, reason)
        try:
            replaced = self._store(data, header, calling)
        except (OSError, sqlite3.Error) as exc:  # disk full, I/O error, index unwritable
            log_event(log, "store_failed", logging.ERROR, sop_uid=header.sop_uid,
                      calling_aet=calling, status="0xA700", reason=str(exc))
            return _status(STATUS_OUT_OF_RESOURCES, f"Out of resources: write error ({exc})")
        log_event(log, "instance_stored", logging.DEBUG, sop_uid=header.sop_uid,
                  series_uid=header.series_uid, calling_aet=calling, replaced=replaced)
        if self.on_stored is not None:
            self.on_stored()
        return STATUS_SUCCESS

    def _store(self, data: bytes, header: InstanceHeader, calling: str) -> bool:
        """Log record, spool file, index row; returns once the log record is durable.

        The record is appended first, so the log's flusher syncs it while the spool file and
        row are written (the two overlap instead of adding up); the spool file and row get
        their fsync later, from the checkpoint, before the log lets go of the record. Any
        failure after the append refuses the instance everywhere: an abort record in the
        log, and the spool as it was (a write or index that failed changed nothing; a failed
        sync takes a new instance out again).
        """
        with self._in_flight_lock:
            now = time.time()
            key = next(self._keys)
            self._in_flight[key] = now
        ticket: Ticket | None = None
        spool = self._spool()
        stored: bool | None = None
        try:
            ticket = self.wal.append(data, calling, now)
            stored = spool.store_instance(data, header, calling, now=now, durable=False)
            self.wal.wait_durable(ticket)
            return stored
        except BaseException:
            if ticket is not None:
                self._refuse(ticket, spool, header, new_in_spool=stored is False)
            raise
        finally:
            if ticket is not None:
                self.wal.settle(ticket)
            with self._in_flight_lock:
                del self._in_flight[key]

    def _refuse(self, ticket: Ticket, spool: Spool, header: InstanceHeader,
                new_in_spool: bool) -> None:
        """An instance answered 0xA700 after its record went into the log."""
        try:
            self.wal.wait_durable(self.wal.abort(ticket))
        except OSError as exc:
            log_event(log, "wal_abort_failed", logging.ERROR, sop_uid=header.sop_uid,
                      reason=str(exc), hint="a replay after a crash may restore it")
        if new_in_spool:
            try:
                spool.forget_instance(header)
            except OSError as exc:
                log_event(log, "instance_forget_failed", logging.ERROR,
                          sop_uid=header.sop_uid, reason=str(exc))


def recover(storage_dir: Path, wal_dir: Path) -> dict[str, int]:
    """Replay the write-ahead log a crash left: each record's instance ends up in the spool
    and index once, as received (the last record wins for a SOP Instance UID sent twice).

    A record already in the spool with the same bytes is left alone, so replaying twice (a
    crash during recovery) changes nothing. Segments go only once the result is durable.
    Before the replay, index rows received after the last checkpoint's mark are checked
    against their files (a power loss may have cut a file whose row survived).
    """
    started = time.time()
    if not wal_dir.is_dir():  # no log yet: every row was fsync-ed on its own, or none exists
        wal_dir.mkdir(parents=True)
        write_mark(wal_dir, started)
        return {"wal_records": 0, "wal_restored": 0, "instances_dropped": 0,
                "instances_repaired": 0}
    mark = read_mark(wal_dir)
    if mark is None:
        log_event(log, "wal_mark_unreadable", logging.WARNING,
                  action="every index row is checked against its file once")
    latest: dict[str, tuple[bytes, InstanceHeader, str, float]] = {}
    records = 0
    for record in replay(wal_dir):
        records += 1
        try:
            header = parse_header(record.data)
        except InputRejected as exc:  # it passed at receipt; a damaged log is worth a line
            log_event(log, "wal_record_unreadable", logging.ERROR, segment=record.segment,
                      offset=record.offset, reason=str(exc))
            continue
        latest.pop(header.sop_uid, None)  # keep arrival order of the last copies
        latest[header.sop_uid] = (record.data, header, record.calling_aet, record.received_at)
    restored = 0
    spool = Spool(storage_dir)
    try:
        checked = spool.verify_instances(0.0 if mark is None else mark)
        if any(checked.values()):
            log_event(log, "spool_rows_verified", logging.WARNING, **checked)
        for data, header, calling, received_at in latest.values():
            if not spool.holds_instance(data, header):
                spool.store_instance(data, header, calling, now=received_at, durable=False)
                restored += 1
    finally:
        spool.close()
    syncfs(storage_dir)
    write_mark(wal_dir, started)
    retire_replayed(wal_dir)
    if records:
        log_event(log, "wal_replayed", records=records, instances=len(latest),
                  restored=restored)
    return {"wal_records": records, "wal_restored": restored, **checked}


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return status


def _log_accepted(event: evt.Event) -> None:
    log_event(log, "association_accepted", calling_aet=event.assoc.requestor.ae_title,
              called_aet=event.assoc.acceptor.ae_title, peer=event.assoc.requestor.address)


def _log_rejected(event: evt.Event) -> None:
    log_event(log, "association_rejected", logging.WARNING,
              calling_aet=event.assoc.requestor.ae_title, peer=event.assoc.requestor.address)


def _log_released(event: evt.Event) -> None:
    log_event(log, "association_released", calling_aet=event.assoc.requestor.ae_title)


def build_ae(node: NodeConfig) -> AE:
    """An AE that accepts Verification and every Storage SOP Class in every transfer syntax."""
    pynetdicom_patches.apply()
    ae = AE(ae_title=node.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.require_called_aet = True
    ae.require_calling_aet = list(node.allowed_calling_aets)
    ae.maximum_associations = node.max_associations
    ae.maximum_pdu_size = 0  # no limit on what we accept: fewer, larger PDUs
    ae.network_timeout = ae.acse_timeout = 60
    ae.dimse_timeout = 120
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae


def tls_server_context(node: NodeConfig) -> ssl.SSLContext | None:
    if node.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile=node.tls.cert, keyfile=node.tls.key)
    if node.tls.ca is not None:
        context.load_verify_locations(cafile=node.tls.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def keep_large_buffers() -> bool:
    """Serve the receive path's 0.1-1 MiB buffers from the heap instead of fresh mmaps.

    glibc maps each allocation above its (adaptive) threshold afresh and unmaps it on free,
    so every PDU, fragment join and spool copy of an instance took new zeroed pages: page
    faults were most of the ~1.2 ms of system time per 514 KiB C-STORE. With a 64 MiB mmap
    threshold and a 256 MiB trim threshold the freed buffers are reused (system time 0.75-1.07
    ms, bench/ingest_profile.py). Same as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in
    the environment; False where the C library has no ``mallopt`` (not glibc): nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 64 * 2**20)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 256 * 2**20))


_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3


def start_scp(node: NodeConfig, receiver: Receiver) -> ThreadedAssociationServer:
    """Start listening (non-blocking); the caller shuts the returned server down."""
    keep_large_buffers()
    ae = build_ae(node)
    if not node.allowed_calling_aets:
        log_event(log, "any_calling_aet_accepted", logging.WARNING,
                  hint="set node.allowed_calling_aets to restrict who may send")
    handlers = [
        (evt.EVT_C_STORE, receiver.handle_store),
        (evt.EVT_CONN_OPEN, set_nodelay),
        (evt.EVT_ACCEPTED, _log_accepted),
        (evt.EVT_REJECTED, _log_rejected),
        (evt.EVT_RELEASED, _log_released),
    ]
    server = ae.start_server((node.host, node.port), block=False, evt_handlers=handlers,
                             ssl_context=tls_server_context(node))
    log_event(log, "scp_listening", ae_title=node.ae_title, host=node.host, port=node.port,
              tls=node.tls is not None)
    return server
