"""Receiving (SPEC section 4): the Storage and Verification SCP.

The C-STORE handler only saves: it writes the bytes as received to the spool (flushed and
fsync-ed), indexes them, and only then answers Success. It never decodes pixels and never
touches a model. Domain problems become DICOM statuses here and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import sqlite3
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, pynetdicom_patches
from dicomnode.config import NodeConfig
from dicomnode.errors import InputRejected
from dicomnode.files import part10_header
from dicomnode.logs import event as log_event
from dicomnode.spool import Spool, parse_header

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
    """C-STORE/C-ECHO handlers bound to one spool folder; one Spool per association thread."""

    def __init__(self, storage_dir: Path, min_free_disk_mb: int,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.storage_dir = Path(storage_dir)
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = min_free_disk_mb * 1024 * 1024
        self.on_stored = on_stored
        self._local = threading.local()

    def _spool(self) -> Spool:
        spool = getattr(self._local, "spool", None)
        if spool is None:
            spool = self._local.spool = Spool(self.storage_dir)
        return spool

    def handle_store(self, event: evt.Event) -> Dataset | int:
        calling = event.assoc.requestor.ae_title
        requested_uid = str(event.request.AffectedSOPInstanceUID or "")
        try:
            free = shutil.disk_usage(self.storage_dir).free
        except OSError:
            free = 0  # the spool folder vanished or is unreadable: refuse, do not crash
        if free < self.min_free_bytes:
            log_event(log, "store_refused", logging.WARNING, sop_uid=requested_uid,
                      calling_aet=calling, status="0xA700", reason="disk below min_free_disk_mb",
                      free_mb=free // 2**20)
            return _status(STATUS_OUT_OF_RESOURCES, "Out of resources: spool disk is full")
        data = part10_header(
            str(event.request.AffectedSOPClassUID or ""), requested_uid,
            str(event.context.transfer_syntax), calling,
        ) + event.encoded_dataset(include_meta=False)
        try:
            header = parse_header(data)
        except InputRejected as exc:
            log_event(log, "store_refused", logging.WARNING, sop_uid=requested_uid,
                      calling_aet=calling, status="0xC210", reason=str(exc))
            return _status(STATUS_CANNOT_UNDERSTAND, str(exc))
        requested_class = str(event.request.AffectedSOPClassUID or "")
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
            replaced = self._spool().store_instance(data, header, calling)
        except (OSError, sqlite3.Error) as exc:  # disk full, I/O error, index unwritable
            log_event(log, "store_failed", logging.ERROR, sop_uid=header.sop_uid,
                      calling_aet=calling, status="0xA700", reason=str(exc))
            return _status(STATUS_OUT_OF_RESOURCES, f"Out of resources: write error ({exc})")
        log_event(log, "instance_stored", logging.DEBUG, sop_uid=header.sop_uid,
                  series_uid=header.series_uid, calling_aet=calling, replaced=replaced)
        if self.on_stored is not None:
            self.on_stored()
        return STATUS_SUCCESS


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


def start_scp(node: NodeConfig, receiver: Receiver) -> ThreadedAssociationServer:
    """Start listening (non-blocking); the caller shuts the returned server down."""
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
