"""DICOMweb destinations (``type = "dicomweb"``): derived instances sent by STOW-RS.

Same queue, backoff and exactly-once rules as the DICOM sender (``scu.py``); only the wire
differs. Every instance is judged from the STOW-RS response: listed in ReferencedSOPSequence
is delivered, in FailedSOPSequence its FailureReason is classified like a C-STORE status,
absent from both is retried. A lost response (connection reset, timeout) is transient: the
resend carries the same SOP Instance UIDs, so the archive replaces or keeps, never duplicates.
dicomweb-client's own retries are switched off: the node's queue is the one retry loop.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from dicomnode.config import Destination
from dicomnode.errors import SendError
from dicomnode.outcomes import Outcome, classify_status
from dicomnode.spool import Delivery

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 32 * 2**20  # one STOW-RS request holds at most this much DICOM
TIMEOUT = (10.0, 120.0)  # (connect, read) seconds
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
# An archive that already holds the instance (same UID, same content) has delivered it.
ALREADY_STORED = {0x0111}  # "Duplicate SOP Instance" in some archives' FailureReason


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (first line, whitespace stripped)."""
    try:
        token = path.read_text(encoding="utf-8").strip().splitlines()
    except OSError as exc:
        raise SendError(f"cannot read auth_file {path}: {exc}", transient=False) from exc
    if not token or not token[0].strip():
        raise SendError(f"auth_file {path} is empty: put the bearer token in it",
                        transient=False)
    return token[0].strip()


def client_for(destination: Destination) -> DICOMwebClient:
    headers = {}
    if destination.auth_file is not None:
        headers["Authorization"] = f"Bearer {read_token(destination.auth_file)}"
    client = DICOMwebClient(destination.url, headers=headers, timeout=TIMEOUT)
    client.set_http_retry_params(retry=False)
    return client


def send_dicomweb(destination: Destination, deliveries: list[Delivery]) -> list[Outcome]:
    """STOW-RS the batch in requests of at most MAX_REQUEST_BYTES; an outcome per delivery."""
    try:
        client = client_for(destination)
    except SendError as exc:
        return [Outcome(d, False, exc.transient, str(exc)) for d in deliveries]
    outcomes: list[Outcome] = []
    pending: list[tuple[Delivery, Dataset]] = []
    size = 0
    for index, delivery in enumerate(deliveries):
        try:
            ds = pydicom.dcmread(delivery.path)
            length = delivery.path.stat().st_size
        except FileNotFoundError:
            outcomes.append(Outcome(delivery, False, False,
                                    f"derived file {delivery.path} is missing"))
            continue
        if pending and size + length > MAX_REQUEST_BYTES:
            outcomes += _store(client, destination, pending)
            pending, size = [], 0
            if not outcomes[-1].ok and outcomes[-1].transient:
                return outcomes + _not_sent(deliveries[index:], outcomes[-1].error)
        pending.append((delivery, ds))
        size += length
    if pending:
        outcomes += _store(client, destination, pending)
    return outcomes


def _not_sent(rest: list[Delivery], error: str) -> list[Outcome]:
    """After a transient failure the rest backs off with it instead of hammering a peer."""
    return [Outcome(d, False, True, f"not sent: {error}") for d in rest]


def _store(client: DICOMwebClient, destination: Destination,
           batch: list[tuple[Delivery, Dataset]]) -> list[Outcome]:
    deliveries = [d for d, _ in batch]
    try:
        response = client.store_instances([ds for _, ds in batch])
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        body = _response_dataset(exc.response)
        if body is not None and ("FailedSOPSequence" in body or "ReferencedSOPSequence" in body):
            return _judge(deliveries, body)  # 409/202-like: per-instance answers
        transient = status in TRANSIENT_HTTP
        reason = exc.response.reason if exc.response is not None else ""
        error = f"STOW-RS to {destination.url}: HTTP {status} {reason}".strip()
        if status in (401, 403):
            error += " (check auth_file)"
        return [Outcome(d, False, transient, error) for d in deliveries]
    except (requests.ConnectionError, requests.Timeout) as exc:
        error = f"STOW-RS to {destination.url}: no response ({type(exc).__name__})"
        return [Outcome(d, False, True, error) for d in deliveries]
    except (requests.RequestException, ValueError) as exc:  # a garbled response
        error = f"STOW-RS to {destination.url}: unreadable response: {exc}"
        return [Outcome(d, False, True, error) for d in deliveries]
    return _judge(deliveries, response)


def _response_dataset(response: requests.Response | None) -> Dataset | None:
    if response is None or not response.content:
        return None
    try:
        return Dataset.from_json(response.json())
    except ValueError:
        return None


def _judge(deliveries: list[Delivery], response: Dataset) -> list[Outcome]:
    """Each delivery's outcome from the STOW-RS response dataset."""
    stored = {str(item.get("ReferencedSOPInstanceUID", ""))
              for item in response.get("ReferencedSOPSequence", [])}
    failed = {str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0xC000))
              for item in response.get("FailedSOPSequence", [])}
    outcomes = []
    for delivery in deliveries:
        if delivery.sop_uid in stored:
            outcomes.append(Outcome(delivery, True))
        elif delivery.sop_uid in failed:
            code = failed[delivery.sop_uid]
            if code in ALREADY_STORED:
                outcomes.append(Outcome(delivery, True))
                continue
            _, transient = classify_status(code)
            outcomes.append(Outcome(delivery, False, transient,
                                    f"STOW-RS FailureReason 0x{code:04X}"))
        else:
            outcomes.append(Outcome(delivery, False, True,
                                    "STOW-RS response does not mention this instance"))
    return outcomes
