"""A series held in memory through an enhancer (dicomnode.engine.volume), as enhance runs it."""

from __future__ import annotations

import numpy as np

from dicomnode.engine.volume import enhance_volume, sample_indices


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
