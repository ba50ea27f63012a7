"""Classical baselines (dicomnode.engine.classical): what they compute, and no guard by default."""

from __future__ import annotations

import numpy as np
from skimage.transform import resize

from dicomnode.engine import load
from dicomnode.engine.classical import bicubic_upscale, nl_means


def test_bicubic_is_scikit_image_order_3_per_slice() -> None:
    stack = np.random.default_rng(0).normal(300.0, 40.0, (2, 12, 10)).astype(np.float32)
    enhancer = load("bicubic-x2")
    assert enhancer.card.active_guards == ()  # a baseline is the algorithm alone
    output = enhancer.for_series([])(stack)
    expected = np.stack([resize(s, (24, 20), order=3, mode="reflect", anti_aliasing=False,
                                preserve_range=True) for s in stack])
    np.testing.assert_allclose(output, expected, atol=1e-4)
    np.testing.assert_allclose(bicubic_upscale(stack[0], 2), expected[0], atol=1e-4)


def test_non_local_means_lowers_the_noise_of_a_flat_slice() -> None:
    rng = np.random.default_rng(1)
    clean = np.full((48, 48), 500.0, dtype=np.float32)
    noisy = clean + rng.normal(0.0, 20.0, clean.shape).astype(np.float32)
    denoised = load("nlm-denoise")(noisy[None])[0]
    assert np.std(denoised - clean) < 0.5 * np.std(noisy - clean)
    np.testing.assert_array_equal(nl_means(clean), clean)  # no noise estimated: unchanged
