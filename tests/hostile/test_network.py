"""The hostile corpus over the network, against one real ``dicomnode serve`` for the module.

For every case (``harness.play_network_case``, which ``bench/hostile_report.py`` runs too): the
DICOM status or association outcome is what the corpus expects, the node still answers a new
C-ECHO, a good series whose association is held open across the case is still stored (and, at
the end, derived and delivered), the spool holds no corrupt, unindexed or half-written file,
and a case that claims absurd sizes does not make the node's peak memory jump.
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


@pytest.mark.parametrize("case", NETWORK_CASES, ids=lambda c: c.name)
def test_case_over_the_network(session: harness.NodeSession, case: Case):
    assert session.alive(), "the node died during an earlier case"
    verdict = harness.play_network_case(session, NETWORK_CASES.index(case), case)
    assert verdict.passed, verdict.problems


@pytest.mark.parametrize("case", STORED_WITH_JOB, ids=lambda c: c.name)
def test_stored_case_is_processed_or_refused_with_a_reason(session: harness.NodeSession,
                                                           case: Case):
    if not session.answers.get(case.name, "").startswith(corpus.OK):
        pytest.skip(f"not stored over the network ({session.answers.get(case.name)})")
    verdict = harness.Verdict(case)
    harness.judge_series(session, verdict)
    assert verdict.passed, verdict.problems


def test_good_series_sent_alongside_are_all_delivered(session: harness.NodeSession):
    assert session.companions, "no case ran"
    assert harness.companions_delivered(session) == []


def test_node_survived_with_a_clean_log_and_stops_cleanly(node: NodeProcess,
                                                          session: harness.NodeSession):
    assert session.checker.problems() == []
    assert node.stop() == 0
    log = node.log_text()
    assert "Traceback" not in log  # library errors are logged in one line, ours never occurred
    assert "node_stopped" in log
