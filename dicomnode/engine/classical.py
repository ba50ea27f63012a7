"""Classical enhancers: the baselines every learned model must beat (SPEC section 7).

They run through exactly the same path as networks, so the flow is real without weights,
and their parameters are the ones the evaluation uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from dicomnode.engine.cards import ModelCard
from dicomnode.engine.guards import apply_guards
from dicomnode.errors import ModelError


def bicubic_upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """scikit-image ``resize(order=3, mode="reflect", anti_aliasing=False)`` by ``scale``."""
    from skimage.transform import resize  # imported on use: see nl_means

    shape = (image.shape[0] * scale, image.shape[1] * scale)
    return resize(image, shape, order=3, mode="reflect", anti_aliasing=False,
                  preserve_range=True).astype(np.float32)


def nl_means(image: np.ndarray) -> np.ndarray:
    """Non-local means with sigma estimated on the slice, in modality values."""
    # imported on use: scikit-image's restoration pulls in scipy.stats, 1.5 s of start-up that
    # every `dicomnode enhance` with a learned model paid for nothing
    from skimage.restoration import denoise_nl_means, estimate_sigma

    image = np.asarray(image, dtype=np.float32)
    sigma = float(estimate_sigma(image))
    if sigma <= 0:
        return image.copy()
    return denoise_nl_means(image, h=0.8 * sigma, sigma=sigma, patch_size=5,
                            patch_distance=6, fast_mode=True).astype(np.float32)


class SliceEnhancer:
    """Applies a per-slice function to each slice of a stack, then the guards the card turns on.

    Guards are off for classical algorithms unless their card sets one true (bicubic with the
    consistency guard is bicubic plus back-projection); the learned models' guards, same code.
    """

    context = 0  # one slice at a time
    needs_sample = False  # no series statistics

    def __init__(self, card: ModelCard, function: Callable[[np.ndarray], np.ndarray]) -> None:
        self.card = card
        self._function = function

    def for_series(self, sample: Sequence[np.ndarray]) -> SliceEnhancer:
        """Itself: a classical algorithm keeps nothing per series."""
        return self

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        stack = np.asarray(stack, dtype=np.float32)
        output = np.stack([self._function(s) for s in stack])
        guards = self.card.active_guards
        if not guards:
            return output
        return apply_guards(guards, output, stack, self.card.scale, self.card.degradation_name)


def _bicubic(card: ModelCard) -> SliceEnhancer:
    if card.task != "super-resolution" or card.scale < 2:
        raise ModelError(f"model {card.name!r}: bicubic needs task super-resolution, scale >= 2")
    return SliceEnhancer(card, lambda s: bicubic_upscale(s, card.scale))


def _nl_means(card: ModelCard) -> SliceEnhancer:
    if card.task != "denoise":
        raise ModelError(f"model {card.name!r}: nl_means needs task denoise")
    return SliceEnhancer(card, nl_means)


CLASSICAL: dict[str, Callable[[ModelCard], SliceEnhancer]] = {
    "bicubic": _bicubic,
    "nl_means": _nl_means,
}
