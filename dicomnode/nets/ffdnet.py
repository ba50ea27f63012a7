"""FFDNet-style blind residual denoiser: a plain 3x3 CNN on a 2x2 pixel-unshuffled image.

Zhang, Zuo, Zhang, "FFDNet: Toward a Fast and Flexible Solution for CNN-Based Image Denoising",
IEEE TIP 27(9), 2018 (arXiv:1710.04026), section III-A. FFDNet reshapes the image into four
half-resolution sub-images (a reversible downsampling, ``pixel_unshuffle``), runs a plain
conv+ReLU stack on them and shuffles the result back: the same receptive field for a quarter of
the spatial work, so a 64-channel network costs what a 32-channel one does at full resolution.

Two changes from the paper, both for the node: no noise-level map input (blind: the node does not
know the dose; the network estimates the noise from the image, as DnCNN-B does), and the stack
predicts the noise residual, returned as input minus residual in the input's precision, so
bf16 convolutions (2-3x faster than fp32 on CPUs with AVX512-BF16, docs/BENCHMARKS.md) only
round the noise estimate, not the image. The first convolution runs in fp32 for the same reason:
an HU image / 1000 rounded to bf16 loses ~4 HU steps, the size of the noise it must find.
Plain convolutions and ReLU only: no normalisation layers, nothing that bf16 slows down.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dicomnode.nets._common import (
    check_channels,
    check_choice,
    check_input_multiple,
    check_int,
    no_autocast,
    residual_source,
)


class FFDNet(nn.Module):
    """Blind FFDNet: unshuffle, (depth) 3x3 convs, shuffle; output = input - predicted noise.

    Parameters: ``in_channels`` (1; 3 = 2.5D, noise subtracted from the centre slice),
    ``out_channels`` (1), ``depth`` (12 convolutions; the paper used 15 for grayscale),
    ``num_features`` (64), ``downscale`` (2, the paper's; 4 trades quality for speed).
    """

    supported_scales: ClassVar[tuple[int, ...]] = (1,)
    pad_multiple: int = 2  # the default downscale; an instance sets its own

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 12,
        num_features: int = 64,
        downscale: int = 2,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = check_channels(in_channels, out_channels)
        self.scale = 1
        check_int("depth", depth, minimum=3)
        nf = check_int("num_features", num_features)
        self.downscale = check_choice("downscale", downscale, (1, 2, 4))
        self.pad_multiple = self.downscale
        cells = self.downscale * self.downscale
        self.head = nn.Conv2d(self.in_channels * cells, nf, 3, 1, 1)
        layers: list[nn.Module] = [nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(nf, nf, 3, 1, 1), nn.ReLU()]
        layers.append(nn.Conv2d(nf, self.out_channels * cells, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clean estimate = input (centre slice for 2.5D) minus the predicted noise."""
        check_input_multiple(x, self.downscale, "ffdnet")
        source = residual_source(x, self.out_channels)
        cells = F.pixel_unshuffle(x, self.downscale) if self.downscale > 1 else x
        with no_autocast(x.device.type):
            features = self.head(cells.to(self.head.weight.dtype))
        noise = self.body(features)
        if self.downscale > 1:
            noise = F.pixel_shuffle(noise, self.downscale)
        return source - noise.to(source.dtype)

