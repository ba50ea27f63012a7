"""Success (0x0000) leaves only after the instance is durable (SPEC section 4), observed.

A page cache hides a missing fsync from every test that reads the file back, so the first test
watches the calls themselves: a real storescu sends to the node's SCP in this process while
``os.fsync``, ``os.replace`` and ``os.rename`` are recorded, and so is every C-STORE response
as it is handed to the network layer. For each instance, in this order: the complete file
fsync-ed under its temporary name, renamed into place, its folder fsync-ed, the index row
committed, and only then the Success response.

The second kills ``dicomnode serve`` with SIGKILL right after the last Success and finds every
instance after the restart: what Success promised does not depend on the process living on.
"""

from __future__ import annotations

import io
import os
import stat
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
from tests.conftest import MR_DIR
from tests.peers import NodeProcess, free_port, read_index, storescu, wait_for

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

    def fsync(self, real: Callable[[int], None]) -> Callable[[int], None]:
        def fsync(fd: int) -> None:
            info = os.fstat(fd)
            path = os.readlink(f"/proc/self/fd/{fd}")
            real(fd)  # durable once it returns: record after
            kind = "fsync_dir" if stat.S_ISDIR(info.st_mode) else "fsync_file"
            self.add(kind, path, info.st_size)
        return fsync

    def rename(self, real: Callable[..., None]) -> Callable[..., None]:
        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real(src, dst, *args, **kwargs)
            self.add("rename", os.path.realpath(src), os.path.realpath(dst))
        return rename

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
    monkeypatch.setattr(os, "fsync", record.fsync(os.fsync))
    monkeypatch.setattr(os, "replace", record.rename(os.replace))
    monkeypatch.setattr(os, "rename", record.rename(os.rename))
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
    server = start_scp(node, Receiver(recorder.storage, 0))
    try:
        storescu(folder, node.port)
    finally:
        server.shutdown()
    events = recorder.events
    responses = [(i, e) for i, e in enumerate(events) if e[0] == "response"]
    expected = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in sent}
    assert {e[1] for _, e in responses} == expected and len(responses) == len(sent)
    for at, (_, sop_uid, status, indexed) in responses:
        assert status == 0x0000, (sop_uid, hex(status))
        assert indexed is not None, f"{sop_uid}: Success sent before the index row was committed"
        final = Path(os.path.realpath(indexed))  # as /proc/self/fd names files
        before = events[:at]
        renames = [i for i, e in enumerate(before) if e[0] == "rename" and Path(e[2]) == final]
        assert renames, f"{sop_uid}: Success sent before the file was renamed into place"
        renamed = renames[-1]
        temporary, size = events[renamed][1], final.stat().st_size
        assert any(e[:3] == ("fsync_file", temporary, size) for e in events[:renamed]), (
            f"{sop_uid}: {temporary} was not fsync-ed with all {size} bytes before the rename "
            f"(events: {events[:renamed][-4:]})")
        assert any(e[0] == "fsync_dir" and Path(e[1]) == final.parent
                   for e in events[renamed:at]), (
            f"{sop_uid}: Success sent before {final.parent} was fsync-ed after the rename")
        assert final.read_bytes().endswith(_dataset_bytes(sop_uid, sent))


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
