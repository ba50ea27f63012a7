"""A C-STORE that reached the PACS but whose response never came back (SPEC section 9).

The node cannot know whether the PACS stored the instance, so the instance is resent on a new
association; the PACS then holds it once (the same SOP Instance UID a second time replaces the
first, as SPEC section 4 has the node itself do), and the metrics and logs say a transient
failure happened. The PACS here is a pynetdicom Storage SCP on loopback owned by the test: it
stores the first instance and then aborts the association, or never answers it.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicomnode import scu
from dicomnode.config import parse_config
from dicomnode.node import Node
from tests.conftest import MR_DIR
from tests.peers import NodeProcess, free_port, storescu, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]

SLICES = 3


class LosingPacs:
    """Stores every instance; on the first C-STORE it ever gets, ``lose`` decides what is
    answered: nothing, with the association aborted, or nothing until ``release`` is set."""

    def __init__(self, lose: str) -> None:
        self.lose = lose
        self.release = threading.Event()
        self.stored: dict[str, bytes] = {}
        self.receipts: Counter[str] = Counter()
        self.associations: dict[str, list[object]] = {}  # SOP UID -> each receipt's association
        self.lost: str | None = None
        self._lock = threading.Lock()
        self.port = free_port()
        ae = AE(ae_title="LOSING")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        data = event.encoded_dataset(include_meta=False)
        with self._lock:
            self.stored[uid] = data  # the same UID again replaces, as a PACS does
            self.receipts[uid] += 1
            self.associations.setdefault(uid, []).append(event.assoc)
            first = self.lost is None
            if first:
                self.lost = uid
        if first and self.lose == "abort":
            event.assoc.abort()
        elif first and self.lose == "silence":
            self.release.wait(30)  # the node gives up long before
        return 0x0000

    def destination(self) -> str:
        return (f'[[destinations]]\nname = "pacs"\ntype = "dicom"\nae_title = "LOSING"\n'
                f'host = "127.0.0.1"\nport = {self.port}\n')

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    folder.mkdir()
    for path in sorted(MR_DIR.glob("*.dcm"))[15:15 + SLICES]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.fixture
def pacs_factory() -> Iterator[Callable[[str], LosingPacs]]:
    started: list[LosingPacs] = []

    def make(lose: str) -> LosingPacs:
        started.append(LosingPacs(lose))
        return started[-1]

    yield make
    for pacs in started:
        pacs.stop()


RULE = ('[[rules]]\nname = "sr"\nmatch = { Modality = "MR" }\nmodel = "bicubic-x2"\n'
        'destinations = ["pacs"]\n')


def _assert_resent_once(pacs: LosingPacs, states: list[tuple[str, str, int]]) -> None:
    """Every derived instance sent, the lost one twice on two associations, held once."""
    assert pacs.lost is not None
    assert [s for _, s, _ in states] == ["sent"] * SLICES, states
    attempts = {uid: n for uid, _, n in states}
    assert attempts[pacs.lost] == 2 and sorted(attempts.values()) == [1] * (SLICES - 1) + [2]
    assert set(pacs.stored) == set(attempts)
    assert pacs.receipts[pacs.lost] == 2 and sum(pacs.receipts.values()) == SLICES + 1
    first, second = pacs.associations[pacs.lost]
    assert first is not second  # resent on a new association


def test_aborted_after_the_request_is_resent_on_a_new_association(
        pacs_factory, source: Path, tmp_path: Path) -> None:
    """Through ``dicomnode serve``: the PACS aborts right after receiving the first C-STORE."""
    pacs = pacs_factory("abort")
    (tmp_path / "node").mkdir()
    node = NodeProcess(tmp_path / "node", RULE, pacs.destination())
    node.start()
    try:
        storescu(source, node.port)
        states = wait_for(lambda: _settled(node.query(
            "SELECT sop_uid, state, attempts FROM deliveries ORDER BY id")), 90,
            "every delivery sent or failed")
        _assert_resent_once(pacs, states)
        metrics = node.http("/metrics")[1]
        assert 'dicomnode_send_failures_total{destination="pacs",kind="transient"} 1.0' in metrics
        assert 'dicomnode_send_failures_total{destination="pacs",kind="permanent"}' not in metrics
        assert f'dicomnode_instances_sent_total{{destination="pacs"}} {SLICES}.0' in metrics
        log = node.log_text()
        assert "batch_sent" in log and "no C-STORE response (timeout or abort)" in log
        assert node.stop() == 0
    finally:
        if node.process is not None and node.process.poll() is None:
            node.kill9()


def test_no_answer_within_the_dimse_timeout_is_resent(
        pacs_factory, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The node in this process, its DIMSE timeout shortened from 20 s to 1.5 s: the PACS keeps
    the first C-STORE unanswered; the node gives up on it, and resends."""
    pacs = pacs_factory("silence")
    monkeypatch.setattr(scu, "send_dicom", functools.partial(scu.send_dicom, timeout=1.5))
    port = free_port()
    config = parse_config({
        "node": {"ae_title": "DICOMNODE", "host": "127.0.0.1", "port": port,
                 "storage_dir": str(tmp_path / "var"), "series_idle_seconds": 1.0,
                 "min_free_disk_mb": 1},
        "http": {"port": free_port()},
        "destinations": [{"name": "pacs", "type": "dicom", "ae_title": "LOSING",
                          "host": "127.0.0.1", "port": pacs.port}],
        "rules": [{"name": "sr", "match": {"Modality": "MR"}, "model": "bicubic-x2",
                   "destinations": ["pacs"]}],
    })
    caplog.set_level(logging.INFO)
    node = Node(config)
    node.start()
    try:
        storescu(source, port)
        wait_for(lambda: pacs.lost and node.spool.db.execute(
            "SELECT attempts FROM deliveries WHERE sop_uid = ?", (pacs.lost,)).fetchone()[0],
            60, "the node to give up on the unanswered C-STORE")
        pacs.release.set()  # let the PACS's handler return: its answer goes nowhere
        states = wait_for(lambda: _settled(node.spool.db.execute(
            "SELECT sop_uid, state, attempts FROM deliveries ORDER BY id").fetchall()), 60,
            "every delivery sent or failed")
        _assert_resent_once(pacs, [tuple(row) for row in states])
        metrics = node.metrics.render().decode()
    finally:
        node.shutdown()
    assert 'dicomnode_send_failures_total{destination="pacs",kind="transient"} 1.0' in metrics
    sent = [r.fields for r in caplog.records if r.getMessage() == "batch_sent"]
    assert {"destination": "pacs", "sent": 0, "failed": 1, "retry_in": 5.0,
            "error": "no C-STORE response (timeout or abort)"} in sent


def _settled(rows: list) -> list | None:
    """The deliveries once none is pending any more (None while one is)."""
    rows = [tuple(row) for row in rows]
    if len(rows) < SLICES or any(state == "pending" for _, state, _ in rows):
        return None
    return rows
