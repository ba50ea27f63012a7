"""A PACS that is slow, short of resources, or refuses one instance (SPEC section 9).

The PACS here is a real DICOM Storage SCP on loopback (pynetdicom) whose answers the test
scripts, so each failure class can be produced on purpose.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from tests.conftest import MR_DIR
from tests.fault_record import record
from tests.node.conftest import MR_COUNT, sr_rule
from tests.peers import NodeProcess, free_port, storescu, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]


class ScriptedPacs:
    """Answers each C-STORE with ``answer(sop_uid, attempt)`` after ``delay`` seconds."""

    def __init__(self, answer: Callable[[str, int], int], delay: float = 0.0) -> None:
        self.answer, self.delay = answer, delay
        self.attempts: Counter[str] = Counter()
        self.accepted: set[str] = set()
        self.acknowledged: list[str] = []  # every Success, so a resend shows as a duplicate
        self.port = free_port()
        self._lock = threading.Lock()
        ae = AE(ae_title="SCRIPTED")
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: evt.Event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID)
        with self._lock:
            self.attempts[uid] += 1
            attempt = self.attempts[uid]
        if self.delay:
            threading.Event().wait(self.delay)
        status = self.answer(uid, attempt)
        if status == 0:
            with self._lock:
                self.accepted.add(uid)
                self.acknowledged.append(uid)
        return status

    def destination(self) -> str:
        return (f'[[destinations]]\nname = "pacs"\ntype = "dicom"\nae_title = "SCRIPTED"\n'
                f'host = "127.0.0.1"\nport = {self.port}\n')

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def run_node(tmp_path: Path) -> Iterator[Callable[[ScriptedPacs], NodeProcess]]:
    started: list[tuple[NodeProcess, ScriptedPacs]] = []

    def run(pacs: ScriptedPacs) -> NodeProcess:
        node = NodeProcess(tmp_path, sr_rule(), pacs.destination())
        node.start()
        started.append((node, pacs))
        storescu(MR_DIR, node.port)
        return node

    yield run
    for node, pacs in started:
        node.stop()
        pacs.stop()


def _received(node: NodeProcess) -> int:
    return node.query("SELECT COUNT(*) FROM instances")[0][0]


def test_slow_pacs_gets_everything_once(run_node):
    pacs = ScriptedPacs(lambda uid, attempt: 0x0000, delay=0.2)
    node = run_node(pacs)
    wait_for(lambda: node.job_states() == ["done"], 120, "delivery to the slow PACS")
    record("slow PACS (0.2 s per C-STORE)", MR_COUNT, _received(node), pacs.acknowledged)
    assert len(pacs.accepted) == MR_COUNT
    assert set(pacs.attempts.values()) == {1}  # slow is not failed: nothing resent


def test_out_of_resources_is_retried_with_backoff(run_node):
    pacs = ScriptedPacs(lambda uid, attempt: 0xA700 if attempt == 1 else 0x0000)
    node = run_node(pacs)
    wait_for(lambda: node.job_states() == ["done"], 120, "delivery after 0xA700")
    record("PACS answers 0xA700 (out of resources) once", MR_COUNT, _received(node),
           pacs.acknowledged)
    assert len(pacs.accepted) == MR_COUNT
    first, second = node.query(
        "SELECT MIN(first_attempt_at), MAX(updated_at) FROM deliveries")[0]
    assert second - first >= 4.5  # waited for the 5 s backoff, no busy loop
    assert "C-STORE status 0xA700" in node.log_text()


def test_one_refused_instance_fails_alone_and_can_be_retried(run_node):
    refused: list[str] = []

    def answer(uid: str, attempt: int) -> int:
        if not refused:
            refused.append(uid)
        return 0xC000 if uid == refused[0] and attempt == 1 else 0x0000

    pacs = ScriptedPacs(answer)
    node = run_node(pacs)
    wait_for(lambda: node.job_states() == ["failed"], 120, "the job to fail")
    assert len(pacs.accepted) == MR_COUNT - 1
    assert pacs.attempts[refused[0]] == 1  # permanent: not retried by itself
    status = node.cli("status").stdout
    assert "C-STORE status 0xC000" in status
    assert node.cli("retry", "--failed").returncode == 0
    wait_for(lambda: node.job_states() == ["done"], 60, "the retried instance")
    record("PACS refuses one instance (0xC000), then `retry --failed`", MR_COUNT,
           _received(node), pacs.acknowledged)
    assert len(pacs.accepted) == MR_COUNT
