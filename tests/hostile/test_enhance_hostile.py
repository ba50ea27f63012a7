"""The hostile corpus fed to ``dicomnode enhance`` next to good files.

Per case (in-process ``main``, the function the console script runs; ``harness.judge_enhance``
decides, as for the report): exit code 0 because the good files are still derived, a message
naming every hostile file (or its derived output), the expected reason, no traceback. Then the
whole corpus in one folder through a real ``python -m dicomnode.cli enhance`` process.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.hostile import corpus, harness
from tests.hostile.corpus import Case
from tests.peers import node_command, node_env

ENHANCE_CASES = corpus.enhance_cases()


@pytest.mark.parametrize("case", ENHANCE_CASES, ids=lambda c: c.name)
def test_case_fed_to_enhance(tmp_path: Path, case: Case):
    result = harness.enhance_case(tmp_path, case)
    assert harness.judge_enhance(result, case) == []


@pytest.mark.slow
def test_whole_corpus_in_one_folder_through_the_command(tmp_path: Path):
    folder, out = tmp_path / "in", tmp_path / "out"
    staged = harness.stage_enhance(folder, ENHANCE_CASES)
    process = subprocess.run(
        [*node_command(), "enhance", str(folder), str(out), "--model", harness.MODEL,
         "--no-progress"], capture_output=True, text=True, timeout=600, env=node_env())
    assert process.returncode == 0, process.stderr[-3000:]
    assert "Traceback" not in process.stderr
    result = harness.enhance_outcomes(folder, out, staged, process.returncode, process.stdout,
                                      process.stderr)
    assert result.good_derived == 2
    silent = [name for name, outcome in result.outcomes.items() if outcome == "no message"]
    assert not silent, f"no message names {silent}"
    derived = sum(outcome == "derived" for outcome in result.outcomes.values())
    assert f"{derived + 2} image(s) derived" in process.stdout
