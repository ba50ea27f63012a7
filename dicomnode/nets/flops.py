"""Count multiply-accumulates (MACs) of a network with forward hooks.

Only Conv2d, ConvTranspose2d and Linear layers are counted (bias additions, norms, activations,
attention products, interpolation and pooling are not): they are well over 95 % of the arithmetic
of every registered family and the usual convention of efficiency papers. A model built on the
``meta`` device is counted without doing any arithmetic, which is how ``python -m
dicomnode.nets.flops`` prints the table in ``docs/ARCHITECTURES.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass of ``model`` on zeros of ``input_shape`` ((N,) C, H, W).

    Conv2d: output elements x (in_channels / groups) x kernel area. ConvTranspose2d: input elements
    x (out_channels / groups) x kernel area. Linear: output elements x in_features. The model is
    run in eval mode without gradients and its training flag is restored afterwards.
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    total = 0

    def conv_hook(
        module: nn.Conv2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        nonlocal total
        kernel = math.prod(module.kernel_size)
        total += output.numel() * (module.in_channels // module.groups) * kernel

    def transposed_hook(
        module: nn.ConvTranspose2d, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        nonlocal total
        kernel = math.prod(module.kernel_size)
        total += inputs[0].numel() * (module.out_channels // module.groups) * kernel

    def linear_hook(
        module: nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
    ) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.ConvTranspose2d):
            handles.append(module.register_forward_hook(transposed_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(shape, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total


def architecture_table(size: int = 256) -> str:
    """Markdown rows: parameters and GMAC of every family's defaults on a 1 x size x size input.

    Super-resolution families are counted at every supported scale (input size fixed, so the
    output is scale times larger); their parameters are those at the default scale. Models are
    built on the meta device: nothing is computed.
    """
    from dicomnode.nets.registry import build_network, list_architectures

    rows = [
        "| name | role | scales | parameters (default scale) | GMAC at 256x256 input |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for info in list_architectures():
        costs = []
        default_scale = info.default_params().get("scale")
        n_params = 0
        for scale in info.scales:
            params = {} if default_scale is None else {"scale": scale}
            with torch.device("meta"):
                model = build_network(info.name, params)
            if scale == (default_scale or 1):
                n_params = sum(p.numel() for p in model.parameters())
            gmac = count_macs(model, (1, 1, size, size)) / 1e9
            costs.append(f"x{scale}: {gmac:.1f}" if len(info.scales) > 1 else f"{gmac:.1f}")
        scales = ", ".join(map(str, info.scales))
        rows.append(
            f"| `{info.name}` | {info.role} | {scales} | {n_params / 1e6:.2f} M | "
            f"{'; '.join(costs)} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(architecture_table())
