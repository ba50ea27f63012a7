"""Every learned model of the zoo beats its baselines when run, not when its card says so.

The zoo is ``$DICOMNODE_MODELS`` when set (a candidate zoo is checked before it ships), else
the shipped ``models/``. Each model runs through the node's own loading and inference on a few
degraded slices of ``tests/data`` (``tests/model_quality.py``) and must beat the best SPEC
section 7 baseline by its margin in PSNR, and every baseline in SSIM, at every evaluation level
of its card: random weights with a matching sha256 fail it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.engine.cards import default_zoo_dir
from tests import model_quality

ZOO = default_zoo_dir()
LEARNED = model_quality.learned_names(ZOO)

pytestmark = [pytest.mark.slow]


def test_the_zoo_has_learned_models() -> None:
    assert LEARNED, f"no learned model (card with weights.sha256) in {ZOO}"


@pytest.mark.parametrize("name", LEARNED)
def test_model_beats_the_best_baseline_by_its_margin(name: str, tmp_path: Path) -> None:
    margin = model_quality.MARGIN_DB.get(name, model_quality.DEFAULT_MARGIN_DB)
    results = model_quality.evaluate(name, ZOO, tmp_path)
    assert results
    report = "\n".join(result.line() for result in results)
    for result in results:
        assert result.gain_db >= margin, (
            f"{name} gains {result.gain_db:+.2f} dB over {result.best_baseline} at "
            f"{result.kind} {result.level:g}, needs {margin:+.2f}:\n{report}")
        model = result.scores["model"]
        worse = [k for k, v in result.scores.items() if k != "model" and v.ssim >= model.ssim]
        assert not worse, f"{name}: SSIM not above {worse} at {result.level:g}:\n{report}"
