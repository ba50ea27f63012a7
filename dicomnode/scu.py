"""Forwarding (SPEC section 9, outbound): each destination has its own queue and sender.

One association per batch; every response status is checked (a missing response is a
failure). Transient failures (connection refused, timeout, 0xA7xx, a lost response) retry with
exponential backoff from 5 s doubling to 10 min until ``retention_hours``; permanent ones
(association rejected permanently, 0xA9xx/0xCxxx for an instance) fail at once with the
reason. Derived objects stay on disk until their destination acknowledged them.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dicomnode import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, pynetdicom_patches
from dicomnode.config import Config, Destination
from dicomnode.errors import SendError
from dicomnode.files import atomic_write_bytes, safe_name
from dicomnode.logs import event
from dicomnode.outcomes import Outcome, classify_status
from dicomnode.scp import set_nodelay
from dicomnode.spool import Delivery, Spool

log = logging.getLogger(__name__)

BACKOFF_FIRST = 5.0
BACKOFF_MAX = 600.0
BATCH_SIZE = 64
MAX_CONTEXTS = 128
# Short enough that pynetdicom's occasional lost C-STORE response (upstream issue 875) costs
# seconds, not minutes: the instance is then resent on a new association.
DIMSE_TIMEOUT = 20.0


def backoff(attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed tries: 5, 10, 20 ... 600."""
    return min(BACKOFF_FIRST * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


def send_dicom(destination: Destination, deliveries: list[Delivery],
               timeout: float = DIMSE_TIMEOUT) -> list[Outcome]:
    """Send a batch on one association and classify every instance's result."""
    pynetdicom_patches.apply()
    ae = AE(ae_title=destination.calling_ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = ae.network_timeout = 30
    ae.dimse_timeout = timeout
    classes = sorted({d.sop_class_uid for d in deliveries})[:MAX_CONTEXTS]
    for sop_class in classes:
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)],
                         tls_args=tls_client_args(destination))
    if not assoc.is_established:
        error = _association_failure(assoc, destination)
        return [Outcome(d, False, error.transient, str(error)) for d in deliveries]
    outcomes: list[Outcome] = []
    try:
        for index, delivery in enumerate(deliveries):
            if delivery.sop_class_uid not in classes:
                outcomes.append(Outcome(delivery, False, True, "deferred", attempted=False))
                continue
            if not assoc.is_established:
                outcomes.extend(Outcome(d, False, True, "association lost", attempted=False)
                                for d in deliveries[index:])
                break
            outcomes.append(_send_one(assoc, delivery))
            if not outcomes[-1].ok and outcomes[-1].transient:
                # A lost response or an abort: this association cannot be trusted any more.
                outcomes.extend(Outcome(d, False, True, "resend", attempted=False)
                                for d in deliveries[index + 1:])
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return outcomes


def tls_client_args(destination: Destination) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for a destination with ``[destinations.tls]``."""
    if destination.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=destination.tls.ca)
    if destination.tls.cert is not None and destination.tls.key is not None:
        context.load_cert_chain(destination.tls.cert, destination.tls.key)
    return context, destination.host


def _send_one(assoc: Association, delivery: Delivery) -> Outcome:
    try:
        ds = pydicom.dcmread(delivery.path)
    except FileNotFoundError:
        return Outcome(delivery, False, False, f"derived file {delivery.path} is missing")
    status = assoc.send_c_store(ds)
    if not status or "Status" not in status:
        assoc.abort()
        return Outcome(delivery, False, True, "no C-STORE response (timeout or abort)")
    code = int(status.Status)
    ok, transient = classify_status(code)
    comment = str(status.get("ErrorComment", "") or "")
    error = "" if ok else f"C-STORE status 0x{code:04X}{': ' + comment if comment else ''}"
    return Outcome(delivery, ok, transient, error)


def _association_failure(assoc: Association, destination: Destination) -> SendError:
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    if assoc.is_rejected:
        response = assoc.acceptor.primitive
        result = getattr(response, "result", None)
        reason = getattr(response, "reason_str", "") or getattr(response, "diagnostic", "")
        permanent = result == 0x01
        kind = "permanently" if permanent else "transiently"
        return SendError(f"association rejected {kind} by {where}: {reason}",
                         transient=not permanent)
    # pynetdicom reports a refused TCP connection as an aborted association.
    return SendError(f"cannot connect to {where} (connection refused, aborted or timed out)",
                     transient=True)


def copy_to_folder(destination: Destination, deliveries: list[Delivery]) -> list[Outcome]:
    """Folder destinations: ``path/<series UID>/<instance UID>.dcm``, written atomically."""
    assert destination.path is not None
    outcomes = []
    for delivery in deliveries:
        try:
            header = pydicom.dcmread(delivery.path, stop_before_pixels=True,
                                     specific_tags=["SeriesInstanceUID"])
            target = (destination.path / safe_name(str(header.SeriesInstanceUID))
                      / f"{safe_name(delivery.sop_uid)}.dcm")
            atomic_write_bytes(target, delivery.path.read_bytes())
            outcomes.append(Outcome(delivery, True))
        except FileNotFoundError:
            outcomes.append(Outcome(delivery, False, False, f"{delivery.path} is missing"))
        except OSError as exc:
            outcomes.append(Outcome(delivery, False, True, f"write failed: {exc}"))
    return outcomes


class Forwarder(threading.Thread):
    """Sends one destination's queue; wakes on new work or when the next retry is due."""

    def __init__(self, config: Config, destination: Destination, wake: threading.Event,
                 stop: threading.Event,
                 on_outcomes: Callable[[str, list[Outcome]], None] | None = None) -> None:
        super().__init__(name=f"forwarder-{destination.name}", daemon=True)
        self.config, self.destination = config, destination
        self.wake, self.stop = wake, stop
        self.on_outcomes = on_outcomes
        self.retention = config.node.retention_hours * 3600

    def run(self) -> None:
        spool = Spool(self.config.node.storage_dir)
        try:
            while not self.stop.is_set():
                batch = spool.due_deliveries(self.destination.name, BATCH_SIZE)
                if not batch:
                    due = spool.next_delivery_time(self.destination.name)
                    wait = 1.0 if due is None else min(max(due - time.time(), 0.05), 1.0)
                    self.wake.wait(wait)
                    self.wake.clear()
                    continue
                self.send(spool, batch)
        finally:
            spool.close()

    def send(self, spool: Spool, batch: list[Delivery]) -> None:
        if self.destination.type == "folder":
            outcomes = copy_to_folder(self.destination, batch)
        elif self.destination.type == "dicomweb":
            from dicomnode.dicomweb import send_dicomweb  # dicomweb-client on first use

            outcomes = send_dicomweb(self.destination, batch)
        else:
            outcomes = send_dicom(self.destination, batch)
        now = time.time()
        updates = []
        for outcome in outcomes:
            delivery = outcome.delivery
            if not outcome.attempted:
                continue  # still pending and due: the next loop sends it on a new association
            if outcome.ok:
                updates.append((delivery, "sent", "", None))
            elif outcome.transient:
                first = delivery.first_attempt_at or now
                if now - first > self.retention:
                    updates.append((delivery, "failed",
                                    f"gave up after retention_hours: {outcome.error}", None))
                else:
                    updates.append((delivery, "pending", outcome.error,
                                    now + backoff(delivery.attempts + 1)))
            else:
                updates.append((delivery, "failed", outcome.error, None))
        spool.mark_deliveries(updates, now)
        sent = sum(o.ok for o in outcomes)
        failed = [o for o in outcomes if not o.ok and o.attempted]
        level = logging.INFO if not failed else logging.WARNING
        event(log, "batch_sent", level, destination=self.destination.name, sent=sent,
              failed=len(failed), error=failed[0].error if failed else "",
              retry_in=round(backoff(failed[0].delivery.attempts + 1), 1) if failed else 0)
        if self.on_outcomes is not None:
            self.on_outcomes(self.destination.name, outcomes)
