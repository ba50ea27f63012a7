"""Learned models: a card's network built from the registry, its safetensors weights loaded, and
the enhancer that runs it: normalise -> network (tiled, batched) -> map back -> safety guards.

Weights are read with ``safetensors`` only: a weights file is data, never code (no pickle, no
``torch.load``). Every mismatch between card and file is a ModelError that names the model, the
tensor and both shapes, so an administrator knows whether to fix the card or re-export.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from dicomnode.engine.cards import ModelCard, read_weights
from dicomnode.engine.devices import choose_precision, resolve_device
from dicomnode.engine.guards import apply_guards
from dicomnode.engine.inference import CPU_PASS_PIXELS, DEFAULT_OVERLAP, DEFAULT_TILE, infer
from dicomnode.engine.normalise import Normaliser
from dicomnode.engine.runtimes import choose_runtime
from dicomnode.errors import ModelError
from dicomnode.logs import event
from dicomnode.nets import build_network, image_border
from dicomnode.nets.fusion import fold_batchnorm

log = logging.getLogger(__name__)
_LISTED = 5  # mismatching tensors named in one message


def build_model(card: ModelCard) -> nn.Module:
    """The card's network with its checked weights, in eval mode on the CPU, BatchNorm folded
    into its convolutions (:mod:`dicomnode.nets.fusion`)."""
    try:
        network = build_network(card.architecture, card.parameters)
    except ModelError as exc:
        raise ModelError(f"model {card.name!r}: {exc}") from None
    _check_matches_card(card, network)
    data = read_weights(card)
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise ModelError(f"model {card.name!r}: {card.weights_path} is not a readable "
                         f"safetensors file ({exc}); re-export the model") from None
    load_state(card, network, state)
    network.eval()
    fold_batchnorm(network)  # after the weights' check: the fold changes the state's keys
    return network


def _check_matches_card(card: ModelCard, network: nn.Module) -> None:
    scale = int(getattr(network, "scale", 1))
    if scale != card.scale:
        raise ModelError(
            f"model {card.name!r}: the card says scale {card.scale} but [architecture] builds "
            f"{card.architecture} at scale {scale}; set [architecture] scale = {card.scale}"
        )
    if int(getattr(network, "out_channels", 1)) != 1:
        raise ModelError(f"model {card.name!r}: [architecture] out_channels must be 1 (one "
                         "output slice per input slice)")


def load_state(card: ModelCard, network: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` strictly: every tensor present, none extra, every shape equal."""
    expected = network.state_dict()
    where = f"model {card.name!r}: {card.weights_path.name}"
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} tensor(s) the architecture needs "
                         f"({', '.join(missing[:_LISTED])})")
        if extra:
            parts.append(f"holds {len(extra)} tensor(s) the architecture does not have "
                         f"({', '.join(extra[:_LISTED])})")
        raise ModelError(f"{where} {' and '.join(parts)}: the weights are for another "
                         f"architecture than [architecture] {card.architecture}")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        listed = "; ".join(f"{k}: file {list(f)}, architecture {list(a)}"
                           for k, f, a in wrong[:_LISTED])
        raise ModelError(f"{where}: {len(wrong)} tensor shape(s) differ ({listed}); the "
                         "card's [architecture] parameters do not match the weights")
    network.load_state_dict(state, strict=True)


class NetworkEnhancer:
    """A learned model: normalise -> network -> map back -> guards, on a stack of slices.

    ``context`` is the number of neighbouring slices a 2.5D network needs on each side:
    ``enhance_series`` then passes that many extra slices before and after the chunk.
    :meth:`for_series` binds the normalisation statistics of one series; calling the enhancer
    directly computes them from the stack it is given.
    """

    def __init__(self, card: ModelCard, network: nn.Module, device: torch.device,
                 precision: str, tile: int | None, overlap: int, batch_size: int,
                 runtime: str = "torch", runner: nn.Module | None = None) -> None:
        self.card = card
        self.network = network
        # what computes each pass: the network itself, or its ONNX Runtime session
        # (dicomnode.engine.runtimes), which falls back to the network on any error
        self.runtime = runtime
        self.runner = network if runner is None else runner
        self.device = device
        self.precision = precision
        self.tile = tile
        self.overlap = overlap
        self.batch_size = batch_size
        self.normalisation = card.normalisation_spec
        self.guards = card.active_guards
        channels = int(getattr(network, "in_channels", 1))
        self.context = channels // 2

    @property
    def needs_sample(self) -> bool:
        """Percentile normalisation reads the series, and so does the intensity guard (its
        tolerance is a share of the series' range); a fixed HU window without it does not."""
        return self.normalisation.needs_series or "intensity" in self.guards

    def for_series(self, sample: Sequence[np.ndarray]) -> SeriesEnhancer:
        """The enhancer for one series, given a few of its slices (modality values)."""
        value_range = (float(max(np.max(s) for s in sample) - min(np.min(s) for s in sample))
                       if sample and "intensity" in self.guards else None)
        if self.normalisation.needs_series and not sample:
            return SeriesEnhancer(self, None, value_range)
        return SeriesEnhancer(self, self.normalisation.for_series(sample), value_range)

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        return self.run(stack, None)

    def run(self, stack: np.ndarray, normaliser: Normaliser | None,
            value_range: float | None = None) -> np.ndarray:
        """Enhance the centre of ``stack``: (N + 2 context, H, W) -> (N, H*s, W*s)."""
        stack = np.asarray(stack, dtype=np.float32)
        context = self.context
        if stack.ndim != 3 or len(stack) <= 2 * context:
            raise ValueError(f"stack has shape {stack.shape}: expected (N + {2 * context}, H, W) "
                             f"with N >= 1 for a network with {2 * context + 1} input slice(s)")
        if normaliser is None:
            normaliser = self.normalisation.for_series([stack])
        scaled = normaliser.forward(stack)
        if context:
            # (N, H, W, 2c+1) view -> (N, 2c+1, H, W): each slice with its neighbours as channels
            scaled = np.moveaxis(sliding_window_view(scaled, 2 * context + 1, axis=0), -1, 1)
        output = infer(scaled, self.runner, self.device, self.precision, self.tile,
                       self.overlap, self.batch_size, border=image_border(self.network))
        output = normaliser.inverse(output.reshape(len(scaled), *output.shape[-2:]))
        centre = stack[context:len(stack) - context]
        return apply_guards(self.guards, output, centre, self.card.scale,
                            self.card.degradation_name, value_range=value_range)


@dataclass(frozen=True)
class SeriesEnhancer:
    """A :class:`NetworkEnhancer` bound to one series' normalisation and, for the intensity
    guard, the series' value range (from the sample: the same for every chunk)."""

    enhancer: NetworkEnhancer
    normaliser: Normaliser | None
    value_range: float | None = None

    @property
    def card(self) -> ModelCard:
        return self.enhancer.card

    @property
    def context(self) -> int:
        return self.enhancer.context

    @property
    def needs_sample(self) -> bool:
        return False  # bound already

    def for_series(self, sample: Sequence[np.ndarray]) -> SeriesEnhancer:
        return self

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        return self.enhancer.run(stack, self.normaliser, self.value_range)


def load_network_enhancer(card: ModelCard, device: str = "auto", precision: str = "auto",
                          tile: int | None = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                          batch_size: int = 8, runtime: str = "torch") -> NetworkEnhancer:
    """Build, load and place a card's network; device, precision and runtime are decided here,
    once.

    ``precision = "auto"`` on a CPU, for a card that validated bf16, times this network on one
    CPU pass in fp32 and bf16 (:func:`dicomnode.engine.devices.measured_cpu_precision`);
    ``runtime = "auto"`` on a CPU then times torch against ONNX Runtime on one tile
    (:func:`dicomnode.engine.runtimes.choose_runtime`).
    """
    network = build_model(card)
    enhancer = network_enhancer(card, network, device, precision, tile, overlap, batch_size,
                                runtime)
    event(log, "model_loaded", model=card.name, version=card.version,
          architecture=card.architecture, device=str(enhancer.device),
          precision=enhancer.precision, runtime=enhancer.runtime,
          guards=",".join(card.active_guards) or "none")
    return enhancer


def network_enhancer(card: ModelCard, network: nn.Module, device: str = "auto",
                     precision: str = "auto", tile: int | None = DEFAULT_TILE,
                     overlap: int = DEFAULT_OVERLAP, batch_size: int = 8,
                     runtime: str = "torch") -> NetworkEnhancer:
    """The enhancer of a network already built and loaded: the zoo's models (through
    :func:`load_network_enhancer`) and training's in-memory networks (validation during a run,
    checkpoints) run through this one function, so both give the same pixels. ``runtime``
    defaults to torch here: a network in training changes between calls, and exporting it for
    every validation would cost more than it saves."""
    if batch_size < 1 or overlap < 0 or (tile is not None and tile < 1):
        raise ModelError(f"model {card.name!r}: batch_size {batch_size}, tile {tile} and overlap "
                         f"{overlap} must be >= 1, >= 1 (or none) and >= 0")
    _check_matches_card(card, network)
    target = resolve_device(device)
    network.eval().to(device=target, memory_format=torch.channels_last)
    chosen = choose_precision(precision, target, card.precisions,
                              probe=precision_probe(network, target),
                              probe_key=precision_key(card))
    used, runner = choose_runtime(runtime, network, target, chosen, tile, image_border(network),
                                  key=runtime_key(card, chosen, tile), name=card.name)
    if used == "onnxruntime":
        chosen = "fp32"  # the exported graph computes in fp32
    return NetworkEnhancer(card, network, target, chosen, tile, overlap, batch_size, used, runner)


def precision_probe(network: nn.Module, device: torch.device) -> Callable[[str], object]:
    """One forward pass in a given precision, as the node runs it: one CPU pass worth of
    input pixels (a 256x256 tile, channels_last, the mirrored rim), random values in [0, 1]."""
    size = math.isqrt(CPU_PASS_PIXELS)
    channels = int(getattr(network, "in_channels", 1))
    image = np.random.default_rng(0).random((1, channels, size, size), dtype=np.float32)
    border = image_border(network)

    def probe(precision: str) -> object:
        return infer(image, network, device, precision, tile=size, overlap=0, batch_size=1,
                     border=border)

    return probe


def runtime_key(card: ModelCard, precision: str, tile: int | None) -> Hashable:
    """What a measured runtime depends on: the network and its weights (the comparison's
    output), the threads, torch's precision and the tile size."""
    return (*precision_key(card), card.weights_sha256, precision, tile)


def precision_key(card: ModelCard) -> Hashable:
    """What a measured precision depends on: the network (not its weights) and the threads."""
    parameters = json.dumps(dict(card.parameters), sort_keys=True, default=str)
    return (card.architecture, parameters, torch.get_num_threads())
