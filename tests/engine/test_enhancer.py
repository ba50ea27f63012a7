"""Every method implements the whole Enhancer protocol (issue 16: no probing for members)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from dicomnode.engine import Enhancer, load
from dicomnode.engine.volume import enhance_volume, sample_indices

MEMBERS = {name for name, _ in inspect.getmembers(Enhancer) if not name.startswith("_")}


def test_the_protocol_declares_what_the_callers_use() -> None:
    assert {"card", "context", "needs_sample", "for_series"} == MEMBERS


@pytest.mark.parametrize(("name", "context", "needs_sample"), [
    ("bicubic-x2", 0, False),     # classical: one slice, no statistics
    ("nlm-denoise", 0, False),
    ("mr-sr-x2", 0, True),        # percentile normalisation reads the series
    ("ct-denoise", 0, False),     # a fixed HU window reads nothing
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


def test_sample_indices_are_evenly_spaced_and_keep_both_ends() -> None:
    picks = sample_indices(35)
    assert len(picks) == 16 and picks[0] == 0 and picks[-1] == 34
    assert list(sample_indices(5)) == [0, 1, 2, 3, 4]
    assert len(sample_indices(0)) == 0


class _Neighbours:
    """A 2.5D fake: returns the mean of each slice's window, to check the chunk edges."""

    card = None
    context = 1
    needs_sample = False

    def for_series(self, sample: list[np.ndarray]) -> _Neighbours:
        assert sample == []
        return self

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        return (stack[:-2] + stack[1:-1] + stack[2:]) / 3


def test_a_volume_gets_the_end_slices_repeated_across_chunks() -> None:
    volume = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    output = enhance_volume(_Neighbours(), volume, batch_size=2)  # type: ignore[arg-type]
    padded = np.concatenate([[0.0], np.arange(5.0), [4.0]])
    expected = (padded[:-2] + padded[1:-1] + padded[2:]) / 3
    assert np.allclose(output[:, 0, 0], expected)
