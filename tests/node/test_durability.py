"""Success (0x0000) leaves only after the instance is durable (SPEC section 4), observed.

A page cache hides a missing fsync from every test that reads the file back, so the first test
watches the calls themselves: a real storescu sends to the node's SCP in this process while
the write-ahead log's appends (``os.pwritev``) and syncs (the injected ``fdatasync``) are
recorded, and so is every C-STORE response as it is handed to the network layer. For each
instance, in this order: its complete record appended to a log segment, an fdatasync of that
segment that started after the append and returned, and only then the Success response (the
spool file and index row already there).

The others kill ``dicomnode serve`` with SIGKILL right after the last Success, and in the
middle of a storescu transfer, and find every acknowledged instance after the restart, once,
byte for byte: what Success promised does not depend on the process living on.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.filereader import read_dataset
from pynetdicom import AE, dul
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import MRImageStorage

from dicomnode.config import NodeConfig
from dicomnode.scp import Receiver, start_scp
from dicomnode.structure import parse_header
from dicomnode.wal import replay
from tests.conftest import MR_DIR
from tests.peers import (
    STORESCU,
    NodeProcess,
    dcmtk_env,
    free_port,
    read_index,
    storescu,
    wait_for,
)

pytestmark = [pytest.mark.network]

C_STORE_RSP = 0x8001


class Recorder:
    """Every fsync, rename and C-STORE response of this process, in the order they happened."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.events: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def add(self, *event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def pwritev(self, real: Callable[..., int]) -> Callable[..., int]:
        def pwritev(fd: int, buffers: list[bytes], offset: int) -> int:
            written = real(fd, buffers, offset)
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path.endswith(".seg") and len(buffers) == 2:
                self.add("append", path, parse_header(bytes(buffers[1])).sop_uid)
            return written
        return pwritev

    def datasync(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        self.add("sync_start", path)
        os.fdatasync(fd)
        self.add("sync_done", path)  # durable once it returns: record after

    def send_pdu(self, real: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        def send_pdu(provider: Any, primitive: Any) -> None:
            for sop_uid, status in _store_responses(primitive):
                rows = read_index(self.storage, "SELECT path FROM instances WHERE sop_uid = ?",
                                  (sop_uid,))
                self.add("response", sop_uid, status, rows[0][0] if rows else None)
            real(provider, primitive)
        return send_pdu


def _store_responses(primitive: Any) -> Iterator[tuple[str, int]]:
    """(Affected SOP Instance UID, Status) of each C-STORE-RSP command in a P-DATA."""
    if not isinstance(primitive, P_DATA):
        return
    for _context, value in primitive.presentation_data_value_list:
        if not value or not value[0] & 0x01:  # message control header: command fragment
            continue
        command = read_dataset(io.BytesIO(bytes(value[1:])), is_implicit_VR=True,
                               is_little_endian=True)
        if command.get("CommandField") == C_STORE_RSP:
            yield str(command.AffectedSOPInstanceUID), int(command.Status)


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    storage = tmp_path / "var"
    record = Recorder(storage)
    monkeypatch.setattr(os, "pwritev", record.pwritev(os.pwritev))
    monkeypatch.setattr(dul.DULServiceProvider, "send_pdu",
                        record.send_pdu(dul.DULServiceProvider.send_pdu))
    return record


def test_success_is_sent_only_after_the_instance_is_durable(recorder: Recorder,
                                                            tmp_path: Path) -> None:
    sent = sorted(MR_DIR.glob("*.dcm"))[:6]
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sent:
        (folder / path.name).write_bytes(path.read_bytes())
    node = NodeConfig(host="127.0.0.1", port=free_port(), storage_dir=recorder.storage,
                      min_free_disk_mb=0)
    receiver = Receiver(recorder.storage, 0, datasync=recorder.datasync)
    server = start_scp(node, receiver)
    try:
        storescu(folder, node.port)
    finally:
        server.shutdown()
        receiver.close()
    events = recorder.events
    responses = [(i, e) for i, e in enumerate(events) if e[0] == "response"]
    expected = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sent}
    assert {e[1] for _, e in responses} == expected and len(responses) == len(sent)
    for at, (_, sop_uid, status, indexed) in responses:
        assert status == 0x0000, (sop_uid, hex(status))
        assert indexed is not None, f"{sop_uid}: Success sent before the index row was committed"
        appends = [i for i, e in enumerate(events[:at]) if e[0] == "append" and e[2] == sop_uid]
        assert appends, f"{sop_uid}: Success sent before its record was appended to the log"
        appended, segment = appends[-1], events[appends[-1]][1]
        started = [i for i, e in enumerate(events[appended:at], appended)
                   if e == ("sync_start", segment)]
        assert any(("sync_done", segment) in events[i:at] for i in started), (
            f"{sop_uid}: Success sent before an fdatasync of {segment} that began after the "
            f"append had returned (events: {events[appended:at]})")
        assert Path(indexed).read_bytes().endswith(_dataset_bytes(sop_uid, sent))


def _dataset_bytes(sop_uid: str, sent: list[Path]) -> bytes:
    """The data set of the sent file (storescu sends it as stored, without its meta)."""
    for path in sent:
        ds = pydicom.dcmread(path)
        if str(ds.SOPInstanceUID) == sop_uid:
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, ds, enforce_file_format=False, little_endian=True,
                             implicit_vr=False)
            return buffer.getvalue()[-1024:]  # the end of the pixel data is enough
    raise AssertionError(f"{sop_uid} was not sent")


@pytest.mark.slow
def test_kill9_right_after_the_last_success_loses_nothing(node_factory, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    destination = f'[[destinations]]\nname = "out"\ntype = "folder"\npath = "{outbox}"\n'
    rule = ('[[rules]]\nname = "sr"\nmatch = { Modality = "MR" }\nmodel = "bicubic-x2"\n'
            'destinations = ["out"]\n')
    node: NodeProcess = node_factory(rule, destination, idle_seconds=2.0)
    node.start()
    files = sorted(MR_DIR.glob("*.dcm"))[:12]
    datasets = [pydicom.dcmread(path) for path in files]
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(MRImageStorage, str(datasets[0].file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOMNODE")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    node.kill9()  # right after the last Success, before the association is even released
    assoc.abort()
    assert statuses == [0x0000] * len(files)
    node.start()
    expected = {str(ds.SOPInstanceUID) for ds in datasets}
    indexed = {row[0]: Path(row[1]) for row in node.query("SELECT sop_uid, path FROM instances")}
    assert set(indexed) == expected
    for ds in datasets:
        stored = pydicom.dcmread(indexed[str(ds.SOPInstanceUID)])
        assert stored.PixelData == ds.PixelData
    wait_for(lambda: node.job_states() == ["done"], 120, "the series derived after restart")
    assert len(list(outbox.rglob("*.dcm"))) == len(files)
    assert node.stop() == 0


def _dataset_part(data: bytes) -> bytes:
    """The bytes after a Part 10 file's meta (what storescu sends and the spool keeps)."""
    (meta_length,) = struct.unpack_from("<I", data, 132 + 8)
    return data[132 + 12 + meta_length:]


@pytest.mark.slow
def test_kill9_during_a_storescu_transfer_keeps_every_acknowledged_instance(
        node_factory, tmp_path: Path) -> None:
    """storescu sends 35 slices; the node dies (SIGKILL) after the 12th Success, with the
    13th on the wire. After the restart every instance storescu saw Success for is in the
    index and the spool exactly once, its data set byte for byte as sent; the one in flight
    is either absent or complete; no log segment is left to replay."""
    node: NodeProcess = node_factory("", "", idle_seconds=3600)
    node.start()
    sending = subprocess.Popen(
        [STORESCU, "-v", "-aet", "MODALITY", "-aec", "DICOMNODE", "+sd", "+r", "+sp", "*.dcm",
         "127.0.0.1", str(node.port), str(MR_DIR)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env())
    acknowledged: list[Path] = []
    in_flight: Path | None = None
    assert sending.stdout is not None
    for line in sending.stdout:
        if "Sending file:" in line:
            in_flight = Path(line.split("Sending file:", 1)[1].strip())
        elif "Received Store Response (Success)" in line:
            assert in_flight is not None
            acknowledged.append(in_flight)
            if len(acknowledged) == 12:
                node.kill9()
                break
    sending.wait(60)
    assert len(acknowledged) == 12
    node.start()
    rows = node.query("SELECT sop_uid, path, size FROM instances")
    indexed = {uid: Path(path) for uid, path, _ in rows}
    assert len(indexed) == len(rows)
    series_files = sorted((node.workdir / "var" / "spool" / "series").rglob("*"))
    assert len([p for p in series_files if p.is_file()]) == len(rows)  # nothing twice
    for source in acknowledged:
        uid = str(pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID)
        assert uid in indexed, f"{source.name}: acknowledged, missing after the restart"
        assert _dataset_part(indexed[uid].read_bytes()) == _dataset_part(source.read_bytes())
    for _uid, path, size in rows:
        assert Path(path).stat().st_size == size
    assert set(indexed) - {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                           for p in acknowledged} <= {
        str(pydicom.dcmread(in_flight, stop_before_pixels=True).SOPInstanceUID)}
    assert "wal_replayed" in node.log_text()
    assert not list(replay(node.workdir / "var" / "spool" / "wal"))  # replayed, retired
    assert node.stop() == 0
