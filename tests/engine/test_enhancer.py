"""Every method implements the whole Enhancer protocol (issue 16: no probing for members)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from dicomnode.engine import Enhancer, load

MEMBERS = {name for name, _ in inspect.getmembers(Enhancer) if not name.startswith("_")}


def test_the_protocol_declares_what_the_callers_use() -> None:
    assert {"card", "context", "needs_sample", "for_series"} == MEMBERS


@pytest.mark.parametrize(("name", "context", "needs_sample"), [
    ("bicubic-x2", 0, False),     # classical: one slice, no statistics
    ("nlm-denoise", 0, False),
    ("mr-sr-x2", 0, True),        # percentile normalisation reads the series
    ("ct-denoise", 0, True),      # a fixed HU window, but the intensity guard's series range
])
def test_learned_and_classical_methods_implement_every_member(name: str, context: int,
                                                              needs_sample: bool) -> None:
    enhancer = load(name, device="cpu", precision="fp32")
    assert enhancer.card.name == name
    assert (enhancer.context, enhancer.needs_sample) == (context, needs_sample)
    stack = np.random.default_rng(0).normal(100.0, 10.0, (2 + 2 * context, 32, 32))
    bound = enhancer.for_series(list(stack) if enhancer.needs_sample else [])
    output = bound(stack.astype(np.float32))
    scale = enhancer.card.scale
    assert output.shape == (2, 32 * scale, 32 * scale)
    assert np.isfinite(output).all()


def test_a_guarded_slice_does_not_depend_on_the_slices_that_share_its_chunk() -> None:
    """The intensity guard's tolerance is a share of the series' range (SPEC section 7), taken
    from the series sample: chunks of 1 and of 4 slices give the same pixels. (With each
    chunk's own range, a slice came out differently by batch size.)"""
    from dicomnode.engine.volume import enhance_volume
    from tests.conftest import MR_DIR
    from training.data import load_series

    (series,) = load_series([MR_DIR])
    volume = np.asarray(series.slices[10:18], dtype=np.float32)
    volume[3] *= 0.4  # one darker slice: its own range differs from the series'
    enhancer = load("mr-denoise", device="cpu", precision="fp32")
    assert "intensity" in enhancer.card.active_guards
    one = enhance_volume(enhancer, volume, batch_size=1)
    four = enhance_volume(enhancer, volume, batch_size=4)
    np.testing.assert_array_equal(one, four)
