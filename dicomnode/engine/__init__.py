"""The engine's front door: one factory from a model card to an :class:`Enhancer`.

The node's worker, ``dicomnode enhance`` and the training module's checks all load models
here, so a card is run one way everywhere. The loaders it calls (``classical``, ``learned``)
import the card module (``zoo``); the card module imports neither, so there is no cycle.
The card, normalisation, inference, guard and degradation modules still sit beside this
package (``dicomnode/zoo.py``, ``learned.py`` ...); moving them under ``engine/`` is the rest
of issue 16's item 1.
"""

from __future__ import annotations

from pathlib import Path

from dicomnode.errors import ModelError
from dicomnode.zoo import Enhancer, ModelCard, check_runnable, load_card

__all__ = ["Enhancer", "load"]


def load(
    model: str | ModelCard,
    zoo_dir: Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    tile: int | None = 512,
    overlap: int = 32,
    batch_size: int = 8,
) -> Enhancer:
    """The enhancer a card (or a model name in the zoo) describes: a classical algorithm, or a
    network from safetensors, its weights checked against the card's sha256.

    ``device`` (``auto|cpu|cuda|cuda:N|mps``), ``precision`` (``auto|fp32|fp16|bf16``, within
    the card's ``[inference] precisions``), ``tile``, ``overlap`` and ``batch_size`` configure
    how a network runs (see :func:`dicomnode.inference.infer`); classical algorithms ignore them.
    """
    from dicomnode.classical import CLASSICAL

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
    from dicomnode.learned import load_network_enhancer

    return load_network_enhancer(card, device=device, precision=precision, tile=tile,
                                 overlap=overlap, batch_size=batch_size)
