"""Denoising convolutional autoencoder (the seed's breast-MR denoiser).

Gondara, "Medical Image Denoising Using Convolutional Denoising Autoencoders", ICDM Workshops 2016
(arXiv:1608.04667); the stacked convolutional autoencoder itself is from Masci et al., "Stacked
Convolutional Auto-Encoders for Hierarchical Feature Extraction", ICANN 2011.

An encoder of (3x3 conv, ReLU, 2x2 max-pool) levels squeezes the image through a bottleneck and a
mirrored decoder of (2x upsample, 3x3 conv, ReLU) levels rebuilds it; a 3x3 conv gives the output.
There are deliberately NO skip connections: this family is the baseline that shows why U-Nets and
residual denoisers keep fine detail that a bottleneck must throw away. The seed had 8 levels in
all (4 down, 4 up), which is the default ``levels``; Gondara used 2 down / 2 up with 64 features.
The output is linear and predicts the clean image directly (no residual), as in the seed.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from dicomnode.errors import ModelError
from dicomnode.nets._common import check_channels, check_input_multiple, check_int


class ConvAutoencoder(nn.Module):
    """Convolutional denoising autoencoder without skip connections.

    Parameters: ``in_channels`` (1; 3 = 2.5D), ``out_channels`` (1), ``levels`` (8 = 4 down and
    4 up; must be even), ``base_channels`` (32, doubled per encoder level up to
    ``max_channels``), ``max_channels`` (128). Input sizes must be multiples of
    ``2**(levels // 2)`` (``pad_multiple``).
    """

    supported_scales: ClassVar[tuple[int, ...]] = (1,)
    pad_multiple: int = 2**4

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        levels: int = 8,
        base_channels: int = 32,
        max_channels: int = 128,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = check_channels(in_channels, out_channels)
        self.scale = 1
        check_int("levels", levels, minimum=2)
        if levels % 2:
            raise ModelError(
                f"parameter 'levels' = {levels} is invalid; expected an even number "
                "(half encoder levels, half decoder levels)"
            )
        base = check_int("base_channels", base_channels)
        cap = check_int("max_channels", max_channels)
        depth = levels // 2
        self.pad_multiple = 2**depth
        widths = [min(base * 2**i, cap) for i in range(depth)]

        encoder: list[nn.Module] = []
        width = self.in_channels
        for w in widths:
            encoder += [nn.Conv2d(width, w, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2)]
            width = w
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = []
        for w in reversed(widths):
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, w, 3, 1, 1)]
            decoder.append(nn.ReLU())
            width = w
        self.decoder = nn.Sequential(*decoder)
        self.head = nn.Conv2d(width, self.out_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode to the bottleneck and decode; nothing bypasses the bottleneck."""
        check_input_multiple(x, self.pad_multiple, "conv_autoencoder")
        return self.head(self.decoder(self.encoder(x)))
