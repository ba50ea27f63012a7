"""Event-driven waits and leaner receive paths for pynetdicom 3.0 (issue 6: ingest rate).

pynetdicom's two reactors poll: the DUL thread sleeps 1 ms whenever its queues and socket
are empty, and every association's reactor sleeps 1 ms on every loop before looking for a
decoded DIMSE message. A C-STORE crosses both, so each instance waits ~2-3 ms doing
nothing, and its socket reads go 4 KiB at a time through Python. Measured on the 2-core
bench machine these waits and copies were over half of the ~6 ms pynetdicom spent per
514 KiB instance (docs/BENCHMARKS.md, "Ingest").

The patches keep pynetdicom's state machine, PDU classes and event handlers untouched and
change only *how long a thread waits and how it reads*:

- the DUL waits in ``select`` on its socket and on a wake-up socket pair written by every
  ``put`` into its event and provider queues (and by a kill), with a 50 ms ceiling so its
  ARTIM timer is still checked;
- an association's reactor waits on a ``threading.Event`` set by every ``put`` into its
  DIMSE message queue and its DUL's to-user queue, by a caller pausing it (``send_c_store``
  and friends), and when the DUL thread ends, with a 10 ms ceiling for its idle timer;
- ``AssociationSocket.recv`` reads straight into one buffer of the PDU's size;
- a message's data set fragments are kept as views and joined once when the last one
  arrives, instead of each being sliced (a copy) and written into a growing ``BytesIO``
  (copies again): ~0.4 ms of the ~1 ms pynetdicom's DIMSE layer spent per 514 KiB instance;
- a C-STORE response's command set (seven fixed elements) is encoded directly instead of
  through a pydicom Dataset encoded twice (1.3 ms of the ~4 ms of CPU per instance);
  anything unusual (OffendingElement, a tiny peer PDU limit, an EVT_DIMSE_SENT handler)
  takes pynetdicom's own path;
- pynetdicom's "standard" debug-dump handlers are switched off (``LOG_HANDLER_LEVEL``);
- a requestor treats "socket no longer connected" after its connect as "could not connect",
  although a fast peer may already have answered A-ASSOCIATE-RJ and closed (a race the 1 ms
  polling hid): a rejection then looked like an abort, so a permanent rejection was retried.
  The requestor now reads the answer when one is already queued;
- each new association copies the server's presentation contexts (every storage class x
  every transfer syntax: ~7,900 UIDs) with ``deepcopy``, which re-validates every UID:
  ~120 ms before the first byte of a sender that opens one association per image. The
  copy now shares the immutable UIDs and copies only the mutable lists.

They are applied once per process by :func:`apply` and only to the pynetdicom versions they
were written and tested against (``SUPPORTED``); any other version runs unpatched, slower
but correct, with one warning. Both the node's SCP and its SCU benefit.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import queue
import select
import socket
import ssl
import struct
import threading
from typing import Any

import pynetdicom
from pynetdicom import _config, evt
from pynetdicom import acse as _acse
from pynetdicom import association as _association
from pynetdicom import dimse as _dimse
from pynetdicom import dimse_messages as _dimse_messages
from pynetdicom import dul as _dul
from pynetdicom import transport as _transport
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext

from dicomnode.logs import event as log_event

log = logging.getLogger(__name__)

SUPPORTED = ("3.0.",)
DUL_WAIT_CEILING = 0.05  # s: ARTIM and kill are still noticed this soon without a wake-up
REACTOR_WAIT_CEILING = 0.01  # s: idle timer and kill() on the association side
RECV_CHUNK = 256 * 1024

_applied = False
_lock = threading.Lock()


class _PauseEvent(threading.Event):
    """The reactor checkpoint: clearing it (a caller pausing the reactor) wakes the reactor."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake()


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A Queue that signals a waiting reactor on every put."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


def is_supported(version: str | None = None) -> bool:
    version = pynetdicom.__version__ if version is None else version
    return version.startswith(SUPPORTED)


def apply() -> bool:
    """Install the patches once; False (and one warning) on an untested pynetdicom."""
    global _applied
    with _lock:
        if _applied:
            return True
        if not is_supported():
            log_event(log, "pynetdicom_unpatched", logging.WARNING,
                      version=pynetdicom.__version__, supported=",".join(SUPPORTED),
                      effect="ingest runs with pynetdicom's 1 ms polling")
            return False
        # pynetdicom's "standard" handlers format a debug dump of every PDU and DIMSE
        # message even when debug logging is off; the node logs its own events.
        _config.LOG_HANDLER_LEVEL = "none"
        _patch_dul()
        _patch_association()
        _transport.AssociationSocket.recv = _recv_exact  # type: ignore[method-assign]
        _patch_send_msg()
        _patch_decode_msg()
        _transport.deepcopy = _copy_contexts  # type: ignore[attr-defined]
        _acse.ACSE.socket = property(_negotiation_socket)  # type: ignore[assignment]
        _applied = True
        return True


# -- DUL ------------------------------------------------------------------------------------

def _patch_dul() -> None:
    cls = _dul.DULServiceProvider
    original_init = cls.__init__

    def __init__(self: Any, assoc: Any) -> None:
        self._sleeping = True  # until the reactor runs, every put signals
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        original_init(self, assoc)
        self.event_queue = _WakingQueue(self._wake_dul)
        self.to_provider_queue = _WakingQueue(self._wake_dul)

    def _wake_dul(self: Any) -> None:
        # Only a DUL thread in (or entering) its wait needs the byte: it sets ``_sleeping``
        # before it looks at its queues and kill flag, so a put seen as not sleeping is
        # found by that look (one interpreter: the put's flag read and the thread's flag
        # write are ordered). Saves ~8 socket sends and wake-ups per C-STORE.
        if not self.__dict__.get("_sleeping", True):
            return
        # A full buffer means it is already signalled; closed means the reactor has ended.
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _get_kill(self: Any) -> bool:
        return bool(self.__dict__.get("_kill_flag", False))

    def _set_kill(self: Any, value: bool) -> None:
        self.__dict__["_kill_flag"] = value
        if value and "_wake_w" in self.__dict__:
            self._wake_dul()

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls._wake_dul = _wake_dul  # type: ignore[attr-defined]
    cls._kill_thread = property(_get_kill, _set_kill)  # type: ignore[attr-defined]
    cls._wait_for_activity = _dul_wait  # type: ignore[attr-defined]
    cls.run_reactor = _dul_run_reactor  # type: ignore[method-assign]


def _dul_wait(self: Any) -> None:
    """Block until the peer sends, a queue is fed, the thread is killed, or the ceiling."""
    self._sleeping = True  # from here on every put sends a wake-up byte
    try:
        if self._kill_thread or not self.event_queue.empty() or \
                not self.to_provider_queue.empty():
            return  # put before the flag was set: no byte came for it
        _dul_select(self)
    finally:
        self._sleeping = False


def _dul_select(self: Any) -> None:
    raw = None
    sock = self.socket
    if sock is not None and getattr(sock, "_is_connected", False):
        raw = sock.socket
    if isinstance(raw, ssl.SSLSocket) and raw.pending():
        return  # decrypted bytes already buffered: select would not see them
    watched = [self._wake_r] if raw is None else [self._wake_r, raw]
    try:
        readable, _, _ = select.select(watched, [], [], DUL_WAIT_CEILING)
    except (OSError, ValueError):  # the peer's socket was closed under us: poll briefly
        readable = [self._wake_r]
    if self._wake_r in readable:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass


def _dul_run_reactor(self: Any) -> None:
    """pynetdicom 3.0's DUL loop with its 1 ms sleep replaced by :func:`_dul_wait`."""
    try:
        _dul_loop(self)
    finally:
        activity = getattr(self.assoc, "_activity", None)
        if activity is not None:
            activity.set()  # the association notices at once that its DUL has ended
        for end in (self._wake_r, self._wake_w):
            end.close()


def _dul_loop(self: Any) -> None:
    self._idle_timer.start()
    idle = False
    while True:
        if not self.assoc._dul_ready.is_set():
            self.assoc._dul_ready.set()
        if idle:
            self._wait_for_activity()
        if self._kill_thread:
            break
        if self.artim_timer.expired:
            self.event_queue.put("Evt18")
        try:
            if self._process_recv_primitive():
                pass
            elif self._is_transport_event():
                self._idle_timer.restart()
        except Exception as exc:  # same hard abort as pynetdicom's own loop
            _dul.LOGGER.error("Exception in DUL.run(), aborting association")
            _dul.LOGGER.exception(exc)
            abort_pdu = _dul.A_ABORT_RQ()
            abort_pdu.source = 0x02
            abort_pdu.reason_diagnostic = 0x00
            self.socket.send(abort_pdu.encode())
            self.assoc.is_aborted = True
            self.assoc.is_established = False
            self.assoc._kill = True
            self._kill_thread = True
            return
        try:
            event = self.event_queue.get(block=False)
        except queue.Empty:
            idle = True
            continue
        self.state_machine.do_action(event)
        idle = False


# -- Association reactor ---------------------------------------------------------------------

def _patch_association() -> None:
    cls = _association.Association
    original_init = cls.__init__

    def __init__(self: Any, ae: Any, mode: str) -> None:
        self._activity = threading.Event()
        original_init(self, ae, mode)
        self.dimse.msg_queue = _WakingQueue(self._activity.set)
        self.dul.to_user_queue = _WakingQueue(self._activity.set)
        checkpoint = _PauseEvent(self._activity.set)
        if self._reactor_checkpoint.is_set():
            checkpoint.set()
        self._reactor_checkpoint = checkpoint  # send_c_store() etc. pause the reactor at once

    original_kill = cls.kill

    def kill(self: Any) -> None:
        self._activity.set()
        original_kill(self)

    cls.__init__ = __init__  # type: ignore[method-assign]
    cls.kill = kill  # type: ignore[method-assign]
    cls._run_reactor = _association_run_reactor  # type: ignore[method-assign]


def _association_run_reactor(self: Any) -> None:
    """pynetdicom 3.0's acceptor loop, waiting on ``_activity`` instead of sleeping 1 ms."""
    LOGGER = _association.LOGGER
    evt = _association.evt
    self._is_paused = False
    while not self._kill:
        self._activity.wait(REACTOR_WAIT_CEILING)
        self._activity.clear()  # anything put after this sets it again: no lost wake-up

        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        context_id, msg = self.dimse.get_msg(block=False)
        if msg:
            self._serve_request(msg, context_id)
            self._activity.set()  # more may already be queued behind it

        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            LOGGER.info("Association Released")
            self.is_released = True
            self.is_established = False
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.kill()
            return

        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            LOGGER.info(log_msg)
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        if not self.dul.is_alive():
            self.kill()
            return

        if self.dul.idle_timer_expired():
            LOGGER.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()
            self.kill()
            return


# -- Socket reads ----------------------------------------------------------------------------

def _recv_exact(self: Any, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` in reads of up to 256 KiB (pynetdicom reads 4 KiB per Python call).

    The result grows by appending, as pynetdicom's does: one zero-filled buffer of the full
    PDU size per read measured slower (fresh pages for every PDU).
    """
    bytestream = bytearray()
    raw = self.socket
    while len(bytestream) < nr_bytes:
        chunk = raw.recv(min(nr_bytes - len(bytestream), RECV_CHUNK))
        if not chunk:  # the peer closed: return what arrived, as pynetdicom does
            return bytestream
        bytestream += chunk
    return bytestream


# -- Association set-up ----------------------------------------------------------------------

class _NegotiationSocket:
    """The DUL's socket as ``ACSE._negotiate_as_requestor`` checks it after connecting.

    "Connected" also when the peer's answer is already queued: a peer that rejects at once
    and closes leaves the socket closed before the requestor looks, and its A-ASSOCIATE-RJ
    must still be read as a rejection, not as a failure to connect.
    """

    def __init__(self, sock: Any, dul: Any) -> None:
        self._sock, self._dul = sock, dul

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    @property
    def _is_connected(self) -> bool:
        return bool(self._sock._is_connected) or not self._dul.to_user_queue.empty()


def _negotiation_socket(self: Any) -> Any:
    sock = self.assoc.dul.socket
    return None if sock is None else _NegotiationSocket(sock, self.assoc.dul)


def _copy_contexts(value: Any, memo: Any = None) -> Any:
    """``deepcopy`` as transport.py uses it, cheap for a list of presentation contexts."""
    if isinstance(value, list) and all(isinstance(cx, PresentationContext) for cx in value):
        copies = []
        for context in value:
            duplicate = copy.copy(context)  # UIDs are immutable str: share them
            duplicate._transfer_syntax = list(context._transfer_syntax)
            copies.append(duplicate)
        return copies
    return copy.deepcopy(value, memo)


# -- C-STORE responses -----------------------------------------------------------------------

def _patch_decode_msg() -> None:
    cls = _dimse_messages.DIMSEMessage
    original = cls.decode_msg

    def decode_msg(self: Any, primitive: Any, assoc: Any = None) -> bool:
        """Data set fragments as views, joined once; anything else is pynetdicom's own path
        (command fragments, chunked-to-file storage, a P-DATA that is not one)."""
        if _config.STORE_RECV_CHUNKED_DATASET or primitive.__class__ is not P_DATA:
            return original(self, primitive, assoc)
        values = primitive.presentation_data_value_list
        if any(data[0] & 1 for _, data in values):  # a command fragment in this P-DATA
            return original(self, primitive, assoc)
        fragments = self.__dict__.setdefault("_fragments", [])
        for _, data in values:
            fragments.append(memoryview(data)[1:])
            if data[0] & 2:  # the last fragment: the data set is complete
                head = self.data_set.getvalue()  # what pynetdicom's path already took
                self.data_set = io.BytesIO(b"".join([head, *fragments]))
                fragments.clear()
                return True
        return False

    cls.decode_msg = decode_msg  # type: ignore[method-assign]


def _patch_send_msg() -> None:
    original = _dimse.DIMSEServiceProvider.send_msg

    def send_msg(self: Any, primitive: Any, context_id: int) -> None:
        command = None
        if (type(primitive) is C_STORE and primitive.MessageIDBeingRespondedTo is not None
                and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)):
            command = encode_store_response(primitive)
        max_pdu = self.maximum_pdu_size
        if command is None or (max_pdu and len(command) + 7 > max_pdu):
            original(self, primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]
        self.dul.send_pdu(pdata)

    _dimse.DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]


def _implicit(element: int, value: bytes) -> bytes:
    """One command element, implicit VR little endian (group 0000)."""
    return struct.pack("<HHI", 0, element, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def encode_store_response(primitive: Any) -> bytes | None:
    """The C-STORE-RSP command set as pynetdicom would encode it, or None to let it do so.

    PS3.7 9.3.1.2: Affected SOP Class UID, Command Field 0x8001, Message ID Being Responded
    To, Command Data Set Type 0x0101 (none), Status, Error Comment, Affected SOP Instance UID.
    """
    if primitive.OffendingElement is not None or primitive.Status is None:
        return None
    try:
        body = b""
        if primitive.AffectedSOPClassUID is not None:
            body += _implicit(0x0002, _padded(str(primitive.AffectedSOPClassUID), b"\0"))
        body += _implicit(0x0100, struct.pack("<H", 0x8001))
        body += _implicit(0x0120, struct.pack("<H", primitive.MessageIDBeingRespondedTo))
        body += _implicit(0x0800, struct.pack("<H", 0x0101))
        body += _implicit(0x0900, struct.pack("<H", primitive.Status))
        if primitive.ErrorComment is not None:
            body += _implicit(0x0902, _padded(str(primitive.ErrorComment), b" "))
        if primitive.AffectedSOPInstanceUID is not None:
            body += _implicit(0x1000, _padded(str(primitive.AffectedSOPInstanceUID), b"\0"))
    except (UnicodeEncodeError, struct.error):
        return None  # a value pynetdicom would encode (or reject) differently: its call
    return _implicit(0x0000, struct.pack("<I", len(body))) + body
