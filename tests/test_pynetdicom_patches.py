"""The pynetdicom 3.0 patches: same bytes on the wire, same protocol behaviour, no leaks.

The speed they buy is measured by ``bench/ingest.sh``; these tests check only that nothing a
peer can observe changed: responses byte for byte, release, abort, the idle timeout, an SCU
pausing its reactor, and that every association returns its wake-up sockets.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, dul, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import MRImageStorage, Verification

from dicomnode import pynetdicom_patches
from tests.peers import dcmtk_env, free_port, wait_for

MR_DIR = Path(__file__).parent / "data" / "mr_siemens_prisma_t1_fl2d_sag_35sl"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(autouse=True, scope="module")
def patched() -> None:
    assert pynetdicom_patches.apply()


def _response(status: int, comment: str | None = None, sop_class: str | None = MR_CLASS,
              offending: list[int] | None = None) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.10.6.2.45"
    primitive.Status = status
    if comment is not None:
        primitive.ErrorComment = comment
    if offending is not None:
        primitive.OffendingElement = offending
    return primitive


@pytest.mark.parametrize("status, comment, sop_class", [
    (0x0000, None, MR_CLASS),
    (0xA700, "Out of resources: spool disk is full", MR_CLASS),
    (0xC210, "odd", MR_CLASS),           # odd length: padded with a space
    (0x0000, None, None),                # no Affected SOP Class UID: element left out
    (0xB000, None, "1.2.3"),             # odd-length UID: padded with NUL
])
def test_store_response_bytes_equal_pynetdicoms_own(status, comment, sop_class):
    primitive = _response(status, comment, sop_class)
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    assert pynetdicom_patches.encode_store_response(primitive) == encode(
        message.command_set, True, True)


def test_unusual_responses_are_left_to_pynetdicom():
    assert pynetdicom_patches.encode_store_response(
        _response(0xA900, offending=[0x00080018])) is None
    assert pynetdicom_patches.encode_store_response(_response(0x0000, comment="é")) is None


def test_context_copies_share_uids_but_not_lists():
    original = PresentationContext()
    original.abstract_syntax = MRImageStorage
    for syntax in ALL_TRANSFER_SYNTAXES:
        original.add_transfer_syntax(syntax)
    (copied,) = pynetdicom_patches._copy_contexts([original])
    assert copied is not original and copied.abstract_syntax == original.abstract_syntax
    assert copied.transfer_syntax == original.transfer_syntax
    copied._transfer_syntax.append("1.2.3")
    assert "1.2.3" not in original.transfer_syntax
    other = {"a": [1, 2]}  # anything else still gets a real deep copy
    assert pynetdicom_patches._copy_contexts(other) == other
    assert pynetdicom_patches._copy_contexts(other)["a"] is not other["a"]


def test_only_the_tested_pynetdicom_versions_are_patched():
    assert pynetdicom_patches.is_supported("3.0.4")
    assert not pynetdicom_patches.is_supported("3.1.0")
    assert not pynetdicom_patches.is_supported("2.1.1")
    # An untested version keeps pynetdicom's own code, with one warning.
    script = (
        "import logging, pynetdicom; logging.basicConfig(level=logging.INFO)\n"
        "pynetdicom.__version__ = '3.9.0'\n"
        "from pynetdicom import dul\n"
        "before = dul.DULServiceProvider.run_reactor\n"
        "from dicomnode import pynetdicom_patches\n"
        "assert pynetdicom_patches.apply() is False\n"
        "assert dul.DULServiceProvider.run_reactor is before\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).parent.parent, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "pynetdicom_unpatched" in result.stderr


# -- behaviour on a real association --------------------------------------------------------

def _scp(port: int, handlers: list, network_timeout: float | None = 60) -> object:
    ae = AE(ae_title="PATCHED")
    ae.maximum_pdu_size = 0
    ae.network_timeout = network_timeout
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_storescu_to_a_patched_scp_gets_every_instance_and_fds_are_returned(tmp_path):
    port = free_port()
    received: list[str] = []

    def on_store(event):
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    server = _scp(port, [(evt.EVT_C_STORE, on_store)])
    try:
        baseline = _open_fds()
        files = sorted(MR_DIR.glob("*.dcm"))[:12]
        for _ in range(3):  # three associations, each a release at the end
            subprocess.run(["/usr/bin/storescu", "-aet", "MODALITY", "-aec", "PATCHED",
                            "127.0.0.1", str(port), *map(str, files)],
                           check=True, env=dcmtk_env(), timeout=60, capture_output=True)
        wait_for(lambda: not server.active_associations, 10, "associations to end")
        wait_for(lambda: _open_fds() <= baseline, 10, "sockets to be closed")
    finally:
        server.shutdown()
    expected = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    assert received == expected * 3


@pytest.mark.parametrize("max_send_pdu", ["4096", "131072"])
def test_fragmented_data_sets_arrive_whole(tmp_path, max_send_pdu):
    """The joined data set fragments (``_patch_decode_msg``) hold the sender's data set: 4 KiB
    PDUs (~30 fragments per image) and 128 KiB ones, several images on one association."""
    port = free_port()
    received: dict[str, bytes] = {}

    def on_store(event):
        received[str(event.request.AffectedSOPInstanceUID)] = event.encoded_dataset(
            include_meta=False)
        return 0x0000

    server = _scp(port, [(evt.EVT_C_STORE, on_store)])
    files = sorted(MR_DIR.glob("*.dcm"))[:4]
    try:
        subprocess.run(["/usr/bin/storescu", "--max-send-pdu", max_send_pdu, "-aet", "MODALITY",
                        "-aec", "PATCHED", "127.0.0.1", str(port), *map(str, files)],
                       check=True, env=dcmtk_env(), timeout=60, capture_output=True)
    finally:
        server.shutdown()
    assert len(received) == len(files)
    for path in files:
        sent = dcmread(path)
        got = dcmread(BytesIO(received[str(sent.SOPInstanceUID)]), force=True)
        assert got.PixelData == sent.PixelData
        assert [e.tag for e in got] == [e.tag for e in sent]
        assert all(got[e.tag].value == e.value for e in sent if e.tag != 0x7FE00010)


def test_a_silent_peer_is_dropped_by_the_network_timeout():
    """The idle timer still fires although the reactors no longer poll every millisecond."""
    port = free_port()
    server = _scp(port, [], network_timeout=1)
    try:
        requestor = AE(ae_title="SILENT")
        requestor.add_requested_context(Verification)
        assoc = requestor.associate("127.0.0.1", port, ae_title="PATCHED")
        assert assoc.is_established
        # Say nothing: the acceptor must give up on its own and release or abort.
        wait_for(lambda: not assoc.is_established, 15, "the idle association to be closed")
        assert assoc.is_released or assoc.is_aborted
    finally:
        server.shutdown()


def test_an_abort_mid_association_ends_the_acceptor():
    port = free_port()
    server = _scp(port, [])
    try:
        requestor = AE(ae_title="ABORTER")
        requestor.add_requested_context(Verification)
        assoc = requestor.associate("127.0.0.1", port, ae_title="PATCHED")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.abort()
        wait_for(lambda: not server.active_associations, 10, "the acceptor to end")
    finally:
        server.shutdown()


def test_a_patched_scu_sends_many_instances_on_one_association(tmp_path):
    """The requestor pauses its reactor for every send_c_store: the pause must not stall."""
    port = free_port()
    out = tmp_path / "scp"
    out.mkdir()
    storescp = subprocess.Popen(["/usr/bin/storescp", "-aet", "STORESCP", "-od", str(out),
                                 str(port)], env=dcmtk_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _port_open(port), 20, "storescp to listen")
        files = sorted(MR_DIR.glob("*.dcm"))[:20]
        requestor = AE(ae_title="PATCHEDSCU")
        requestor.add_requested_context(MR_CLASS, ["1.2.840.10008.1.2.1"])
        assoc = requestor.associate("127.0.0.1", port, ae_title="STORESCP")
        assert assoc.is_established
        statuses = [assoc.send_c_store(f).Status for f in files]
        assoc.release()
        assert assoc.is_released
    finally:
        storescp.terminate()
        storescp.wait(timeout=20)
    assert statuses == [0x0000] * len(files)
    assert len(list(out.iterdir())) == len(files)


def test_threads_end_with_their_associations():
    port = free_port()
    server = _scp(port, [])
    before = threading.active_count()
    try:
        for _ in range(5):
            requestor = AE(ae_title="ECHOER")
            requestor.add_requested_context(Verification)
            assoc = requestor.associate("127.0.0.1", port, ae_title="PATCHED")
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
        wait_for(lambda: threading.active_count() <= before, 10, "reactor threads to end")
    finally:
        server.shutdown()


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_short_read_returns_what_arrived():
    """A peer closing mid-PDU: recv returns the bytes that came, as pynetdicom's does."""
    left, right = socket.socketpair()

    class Holder:
        socket = left

    right.sendall(struct.pack(">BBL", 4, 0, 100) + b"abc")
    right.close()
    assert pynetdicom_patches._recv_exact(Holder(), 20) == struct.pack(">BBL", 4, 0, 100) + b"abc"
    left.close()


def test_a_fast_rejection_is_a_rejection_and_a_closed_port_is_not():
    """A peer that rejects and closes at once (Orthanc does) must read as rejected: with the
    reactors no longer polling, the socket can be closed before the requestor looks at it."""
    port = free_port()
    ae = AE(ae_title="PATCHED")
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", port), block=False)
    try:
        outcomes = []
        for _ in range(20):
            requestor = AE(ae_title="NODE")
            requestor.add_requested_context(Verification)
            assoc = requestor.associate("127.0.0.1", port, ae_title="SOMEONEELSE")
            outcomes.append((assoc.is_rejected, assoc.is_aborted, assoc.is_established))
        assert set(outcomes) == {(True, False, False)}
    finally:
        server.shutdown()
    requestor = AE(ae_title="NODE")
    requestor.add_requested_context(Verification)
    assoc = requestor.associate("127.0.0.1", free_port(), ae_title="NOBODY")
    assert not assoc.is_rejected and not assoc.is_established and assoc.is_aborted


class _IdleDul:
    """The parts of a DUL that its wait and its queues' wake-ups touch (no association)."""

    _kill_thread = False
    socket = None

    def __init__(self) -> None:
        self._sleeping = False  # the reactor is busy, as after its first wait
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.event_queue = pynetdicom_patches._WakingQueue(self._wake_dul)
        self.to_provider_queue = pynetdicom_patches._WakingQueue(self._wake_dul)

    def _wake_dul(self) -> None:
        dul.DULServiceProvider._wake_dul(self)  # type: ignore[attr-defined]

    def bytes_waiting(self) -> int:
        try:
            return len(self._wake_r.recv(4096))
        except BlockingIOError:
            return 0

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()


def _wait_in_thread(idle: _IdleDul) -> threading.Thread:
    thread = threading.Thread(target=pynetdicom_patches._dul_wait, args=(idle,), daemon=True)
    thread.start()
    return thread


def test_a_busy_dul_gets_no_wake_up_bytes_and_finds_its_work(monkeypatch):
    """Puts while the DUL thread works (its own events, one per PDU) send no byte; a put made
    just before it waits is found by its look at the queues, not lost in a 60 s wait."""
    monkeypatch.setattr(pynetdicom_patches, "DUL_WAIT_CEILING", 60.0)
    idle = _IdleDul()
    try:
        for event in ("Evt10", "Evt10", "Evt9"):
            idle.event_queue.put(event)
        idle.to_provider_queue.put("P-DATA")
        assert idle.bytes_waiting() == 0
        waiter = _wait_in_thread(idle)
        waiter.join(30)
        assert not waiter.is_alive(), "queued work was not noticed: the DUL slept on it"
    finally:
        idle.close()


def test_a_put_wakes_a_waiting_dul(monkeypatch):
    """The C-STORE response put while the DUL waits in select wakes it at once (with a 60 s
    ceiling, a lost wake-up would hold it there)."""
    monkeypatch.setattr(pynetdicom_patches, "DUL_WAIT_CEILING", 60.0)
    idle = _IdleDul()
    try:
        waiter = _wait_in_thread(idle)
        wait_for(lambda: idle._sleeping, 10, "the DUL to enter its wait")
        idle.to_provider_queue.put("C-STORE-RSP")
        waiter.join(30)
        assert not waiter.is_alive(), "the put did not wake the waiting DUL"
        assert idle._sleeping is False
    finally:
        idle.close()
