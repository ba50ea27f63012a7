"""The hostile corpus over the network, against one real ``dicomnode serve`` for the module.

For every case (``harness.play_network_case``, which ``bench/hostile_report.py`` runs too): the
DICOM status or association outcome is what the corpus expects, the node still answers a new
C-ECHO, a good series whose association is held open across the case is still stored (and, at
the end, derived and delivered), the spool holds no corrupt, unindexed or half-written file,
and a case that claims absurd sizes does not make the node's peak memory jump.

Every test plays the cases it needs if this run has not played them yet, so any subset (one
case's ``-k``, the last test alone) runs its checks instead of skipping them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile import corpus, harness
from tests.hostile.corpus import Case
from tests.peers import NodeProcess

pytestmark = [pytest.mark.network, pytest.mark.slow]

NETWORK_CASES = corpus.network_cases()
STORED_WITH_JOB = [c for c in NETWORK_CASES if c.job is not None]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    workdir = tmp_path_factory.mktemp("hostile-node")
    rules, destinations = harness.node_config(workdir / "out")
    process = NodeProcess(workdir, rules, destinations, idle_seconds=1.0)
    process.start()
    try:
        yield process
    finally:
        if process.process is not None and process.process.poll() is None:
            process.kill9()


@pytest.fixture(scope="module")
def session(node: NodeProcess) -> harness.NodeSession:
    assert node.process is not None
    return harness.NodeSession(node.port, node.process.pid, node.workdir / "var",
                               node.workdir / "out", node.log)


def _answer(session: harness.NodeSession, case: Case) -> str:
    """What the node answered ``case``, playing it now if no earlier test of this run did."""
    if case.name not in session.answers:
        assert session.alive(), "the node died during an earlier case"
        harness.play_network_case(session, NETWORK_CASES.index(case), case)
    return session.answers[case.name]


@pytest.mark.parametrize("case", NETWORK_CASES, ids=lambda c: c.name)
def test_case_over_the_network(session: harness.NodeSession, case: Case):
    assert session.alive(), "the node died during an earlier case"
    verdict = harness.play_network_case(session, NETWORK_CASES.index(case), case)
    assert verdict.passed, verdict.problems


@pytest.mark.parametrize("case", STORED_WITH_JOB, ids=lambda c: c.name)
def test_stored_case_is_processed_or_refused_with_a_reason(session: harness.NodeSession,
                                                           case: Case):
    answer = _answer(session, case)
    assert harness.matches(corpus.OK, case.net), f"{case.name}: a job without a store"
    assert answer.startswith(corpus.OK), f"not stored over the network: {answer}"
    verdict = harness.Verdict(case)
    harness.judge_series(session, verdict)
    assert verdict.passed, verdict.problems


def test_good_series_sent_alongside_are_all_delivered(session: harness.NodeSession):
    if not session.companions:
        _answer(session, NETWORK_CASES[0])
    assert session.companions, "no case ran"
    assert harness.companions_delivered(session) == []


def test_node_survived_with_a_clean_log_and_stops_cleanly(node: NodeProcess,
                                                          session: harness.NodeSession):
    if not session.answers:
        _answer(session, NETWORK_CASES[0])
    assert session.alive(), "the node died during a case"
    assert session.checker.problems() == []
    assert node.stop() == 0
    log = node.log_text()
    assert "Traceback" not in log  # library errors are logged in one line, ours never occurred
    assert "node_stopped" in log
