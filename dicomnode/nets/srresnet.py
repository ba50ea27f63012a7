"""SRResNet generator and SRGAN discriminator.

Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
Network", CVPR 2017 (arXiv:1609.04802), figure 4.

Generator: a 9x9 convolution with PReLU, B identical residual blocks (3x3 conv, BatchNorm, PReLU,
3x3 conv, BatchNorm, identity skip), a 3x3 conv with BatchNorm, a global skip from the head,
sub-pixel upsampling stages (3x3 conv to 4x channels, PixelShuffle x2, PReLU) and a 9x9 output
convolution. The paper uses B = 16 and 64 features for x4 (two x2 stages). Here x2, x4 and x8 use
one, two and three x2 stages; x3 uses a single x3 stage (conv to 9x channels, PixelShuffle x3), as
the seed's 3x MR system needed. The output is linear (no tanh), because inputs are normalised
intensities that are not bounded to [-1, 1]. Default depth here is 8 blocks (paper: 16).

Discriminator: eight 3x3 convolutions (64, 64/2, 128, 128/2, 256, 256/2, 512, 512/2 features,
"/2" = stride 2), LeakyReLU 0.2, BatchNorm except on the first, then Dense(1024), LeakyReLU,
Dense(1). The paper feeds 96x96 crops, so the dense layer sees a 6x6 map; an adaptive average pool
to ``pool_size`` (6) makes it work on any patch size. It returns a logit (no sigmoid).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from dicomnode.nets._common import check_channels, check_choice, check_int


class _ResidualBlock(nn.Module):
    """conv-BN-PReLU-conv-BN with an identity skip (paper, figure 4)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, 1, 1),
            nn.BatchNorm2d(features),
            nn.PReLU(features),
            nn.Conv2d(features, features, 3, 1, 1),
            nn.BatchNorm2d(features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _pixel_shuffle_stage(features: int, factor: int) -> nn.Sequential:
    """Sub-pixel convolution: learn factor**2 sub-images, then rearrange them into space."""
    return nn.Sequential(
        nn.Conv2d(features, features * factor * factor, 3, 1, 1),
        nn.PixelShuffle(factor),
        nn.PReLU(features),
    )


def upsample_stages(scale: int) -> list[int]:
    """x3 is one x3 stage; powers of two are repeated x2 stages, as in the paper."""
    if scale == 3:
        return [3]
    return [2] * (scale.bit_length() - 1)


class SRResNet(nn.Module):
    """SRResNet super-resolution generator.

    Parameters: ``in_channels`` (1; 3 = 2.5D), ``out_channels`` (1), ``scale`` (2, 3, 4, 8;
    default 4 as in the paper), ``num_blocks`` (8; paper 16), ``num_features`` (64, as in the
    paper).
    """

    supported_scales: ClassVar[tuple[int, ...]] = (2, 3, 4, 8)
    pad_multiple: int = 1

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        scale: int = 4,
        num_blocks: int = 8,
        num_features: int = 64,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = check_channels(in_channels, out_channels)
        self.scale = check_choice("scale", scale, self.supported_scales)
        blocks = check_int("num_blocks", num_blocks)
        nf = check_int("num_features", num_features)
        self.head = nn.Sequential(nn.Conv2d(self.in_channels, nf, 9, 1, 4), nn.PReLU(nf))
        self.body = nn.Sequential(
            *(_ResidualBlock(nf) for _ in range(blocks)),
            nn.Conv2d(nf, nf, 3, 1, 1),
            nn.BatchNorm2d(nf),
        )
        self.upsample = nn.Sequential(
            *(_pixel_shuffle_stage(nf, f) for f in upsample_stages(self.scale))
        )
        self.tail = nn.Conv2d(nf, self.out_channels, 9, 1, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features at low resolution, global skip, then sub-pixel upsampling."""
        head = self.head(x)
        return self.tail(self.upsample(head + self.body(head)))


class SRGANDiscriminator(nn.Module):
    """SRGAN discriminator, made size-agnostic with an adaptive average pool before the dense part.

    Parameters: ``in_channels`` (1), ``base_channels`` (32; paper 64), ``pool_size`` (6: the 6x6
    map the paper's 96x96 crops give), ``hidden`` (1024, as in the paper). Output: logits (N, 1).
    """

    supported_scales: ClassVar[tuple[int, ...]] = (1,)
    pad_multiple: int = 1

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        pool_size: int = 6,
        hidden: int = 1024,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        base = check_int("base_channels", base_channels)
        pool = check_int("pool_size", pool_size)
        hid = check_int("hidden", hidden)
        layers: list[nn.Module] = [nn.Conv2d(self.in_channels, base, 3, 1, 1), nn.LeakyReLU(0.2)]
        width = base
        # (features, stride) for the remaining seven convolutions of the paper's figure 4
        plan = [(base, 2), (base * 2, 1), (base * 2, 2), (base * 4, 1), (base * 4, 2)]
        plan += [(base * 8, 1), (base * 8, 2)]
        for features, stride in plan:
            layers += [
                nn.Conv2d(width, features, 3, stride, 1, bias=False),
                nn.BatchNorm2d(features),
                nn.LeakyReLU(0.2),
            ]
            width = features
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width * pool * pool, hid),
            nn.LeakyReLU(0.2),
            nn.Linear(hid, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One real/fake logit per image."""
        return self.classifier(self.pool(self.features(x)))
