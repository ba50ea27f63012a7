"""The engine: one folder for everything that turns a model card into enhanced pixels.

Cards (``cards``), normalisation (``normalise``), devices and precision (``devices``,
``choices``), tiled batched inference (``inference``), safety guards (``guards``), the
degradations the guards and training share (``degradations``), the two kinds of method
(``learned``, ``classical``) and a series held in memory through a method (``volume``). The
node's worker, ``dicomnode enhance`` and the training module's evaluation all load models
through :func:`load` or its parts, so a card runs one way everywhere.
Imports point into this folder only: nothing here imports the server or ``training``.

Importing this package loads nothing but this file (the loaders are imported on use), so the
configuration can name :mod:`dicomnode.engine.choices` without loading torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np

    from dicomnode.engine.cards import ModelCard

__all__ = ["Enhancer", "load"]


class Enhancer(Protocol):
    """What the worker, ``enhance`` and training's evaluation use of a loaded model.

    Learned (:class:`dicomnode.engine.learned.NetworkEnhancer`) and classical
    (:class:`dicomnode.engine.classical.SliceEnhancer`) methods implement every member, so
    callers never probe for one.
    """

    @property
    def card(self) -> ModelCard:
        """The card it was loaded from: task, scale, modalities, guards, labels."""
        ...

    @property
    def context(self) -> int:
        """Neighbouring slices it needs on each side (2.5D networks; 0 for a single slice):
        a stack passed to it holds that many extra slices before and after those it returns."""
        ...

    @property
    def needs_sample(self) -> bool:
        """Whether :meth:`for_series` reads its sample (series statistics such as
        percentiles); when False the caller may pass an empty one and decode nothing."""
        ...

    def for_series(self, sample: Sequence[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """The callable for one series, given a few of its slices in modality values (up to
        :data:`dicomnode.engine.volume.SAMPLE_SLICES`, evenly spaced): per-series state lives
        in what it returns, never in the enhancer."""
        ...

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        """(N + 2 context, H, W) modality values -> (N, H*f, W*f), statistics from ``stack``."""
        ...


def load(
    model: str | ModelCard,
    zoo_dir: Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int | None = 512,
    overlap: int = 32,
    batch_size: int = 8,
    runtime: str = "torch",
) -> Enhancer:
    """The enhancer a card (or a model name in the zoo) describes: a classical algorithm, or a
    network from safetensors, its weights checked against the card's sha256.

    ``device`` (``auto|cpu|cuda|cuda:N|mps``), ``precision`` (``auto|fp32|fp16|bf16``, within
    the card's ``[inference] precisions``), ``tile``, ``overlap`` and ``batch_size`` configure
    how a network runs (see :func:`dicomnode.engine.inference.infer`); ``runtime``
    (``auto|torch|onnxruntime``, :func:`dicomnode.engine.runtimes.choose_runtime`) what computes
    its passes on a CPU: torch by default here (the reference: training's evaluation, benches),
    ``[worker] runtime`` and ``enhance --runtime`` (default ``auto``) for the node. Classical
    algorithms ignore them all.
    """
    from dicomnode.engine.cards import ModelCard, check_runnable, load_card
    from dicomnode.engine.classical import CLASSICAL
    from dicomnode.errors import ModelError

    card = model if isinstance(model, ModelCard) else load_card(model, zoo_dir)
    check_runnable(card)
    if not card.learned:
        factory = CLASSICAL.get(card.architecture)
        if factory is None:
            raise ModelError(
                f"model {card.name!r}: architecture {card.architecture!r} is not a classical "
                f"algorithm ({', '.join(sorted(CLASSICAL))}) and the card has no weights.sha256"
            )
        return factory(card)
    from dicomnode.engine.learned import load_network_enhancer

    return load_network_enhancer(card, device=device, precision=precision, tile=tile,
                                 overlap=overlap, batch_size=batch_size, runtime=runtime)
