"""Small helpers shared by the network families: parameter checks and the 2.5D residual source.

Constructors check their parameters themselves (so a network built directly is checked too) and
raise :class:`~dicomnode.errors.ModelError` naming the parameter and the value found;
:func:`dicomnode.nets.registry.build_network` adds the architecture name in front.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

import torch

from dicomnode.errors import ModelError

T = TypeVar("T")


def check_int(param: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (bools rejected), else raise ModelError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelError(
            f"parameter {param!r} = {value!r} is invalid; expected an integer >= {minimum}"
        )
    return value


def check_float(param: str, value: object, low: float, high: float) -> float:
    """Return ``value`` as float if ``low <= value <= high``, else raise ModelError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ModelError(
            f"parameter {param!r} = {value!r} is invalid; expected a number in [{low}, {high}]"
        )
    return float(value)


def check_choice(param: str, value: T, choices: Iterable[T]) -> T:
    """Return ``value`` if it is one of ``choices``, else raise ModelError listing them."""
    options = tuple(choices)
    if value not in options:
        listed = ", ".join(repr(c) if isinstance(c, str) else str(c) for c in options)
        raise ModelError(
            f"parameter {param!r} = {value!r} is not supported; supported values: {listed}"
        )
    return value


def check_int_sequence(param: str, value: object, minimum: int = 0) -> tuple[int, ...]:
    """Return a non-empty list/tuple of ints >= ``minimum`` as a tuple (TOML gives lists)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) == 0:
        raise ModelError(
            f"parameter {param!r} = {value!r} is invalid; expected a non-empty list of integers"
        )
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
            raise ModelError(
                f"parameter {param!r} = {value!r} is invalid; every entry must be an "
                f"integer >= {minimum}"
            )
    return tuple(value)


def check_channels(in_channels: object, out_channels: object) -> tuple[int, int]:
    """Check the channel pair every family takes.

    ``in_channels`` > 1 with ``out_channels`` == 1 is the 2.5D case: neighbouring slices stacked as
    channels, the output is the centre slice. Otherwise the counts must be equal, because the
    residual families add the input back channel by channel.
    """
    cin = check_int("in_channels", in_channels)
    cout = check_int("out_channels", out_channels)
    if cout != 1 and cout != cin:
        raise ModelError(
            f"parameter 'out_channels' = {cout} is invalid with in_channels = {cin}; "
            "use out_channels = 1 (2.5D: output the centre slice) or out_channels = in_channels"
        )
    if cout == 1 and cin > 1 and cin % 2 == 0:
        raise ModelError(
            f"parameter 'in_channels' = {cin} is invalid for 2.5D input; use an odd number of "
            "slices so that there is a centre slice"
        )
    return cin, cout


def residual_source(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """The part of the input a residual network adds its prediction to.

    With a 2.5D input (odd number of slices as channels, one output channel) this is the centre
    slice; otherwise the whole input.
    """
    if x.shape[1] == out_channels:
        return x
    centre = x.shape[1] // 2
    return x[:, centre : centre + 1]


def check_input_multiple(x: torch.Tensor, multiple: int, arch: str) -> None:
    """Raise ValueError unless the spatial size is a multiple of ``multiple``.

    The inference tiler pads every tile to ``pad_multiple`` of the network, so reaching this is a
    programming error, not a data problem.
    """
    if multiple > 1 and (x.shape[-2] % multiple or x.shape[-1] % multiple):
        raise ValueError(
            f"{arch}: input size {tuple(x.shape[-2:])} is not a multiple of {multiple}; "
            f"pad the input to a multiple of the network's pad_multiple ({multiple})"
        )


def no_autocast(device_type: str) -> AbstractContextManager[object]:
    """Autocast switched off where it exists (the meta device, used to count MACs, has none):
    for the layers that must see HU-sized values in fp32 under bf16/fp16 autocast."""
    if device_type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()
