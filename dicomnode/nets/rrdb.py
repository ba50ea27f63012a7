"""ESRGAN generator: RRDBNet (residual-in-residual dense blocks).

Wang et al., "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks", ECCV Workshops
2018 (arXiv:1809.00219), section 3.1 and figure 4.

Compared with SRResNet, ESRGAN removes every BatchNorm (it brings artefacts when training and test
statistics differ, as between scanners), replaces the residual block by the residual-in-residual
dense block (three dense blocks of five 3x3 convolutions with growth channels, each scaled by 0.2
before its residual sum, and the three together scaled by 0.2 again), and initialises the dense
blocks with small weights (Kaiming scaled by 0.1) so that very deep networks train. Upsampling is
nearest-neighbour x2 followed by a 3x3 conv and LeakyReLU(0.2) per stage (the published code),
which avoids the checkerboard artefacts of transposed convolutions; x3 uses one nearest x3 stage.

Paper size: 23 blocks, 64 features, 32 growth channels (16.7 M parameters). The default here is
6 blocks (the depth of the later lightweight ESRGAN variants) to keep CPU inference tolerable;
``num_blocks=23`` restores the paper's network.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dicomnode.nets._common import check_channels, check_choice, check_float, check_int


class _DenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions; the output is scaled before the residual sum."""

    def __init__(self, features: int, growth: int, residual_scale: float) -> None:
        super().__init__()
        self.residual_scale = residual_scale
        self.convs = nn.ModuleList(
            nn.Conv2d(features + i * growth, growth if i < 4 else features, 3, 1, 1)
            for i in range(5)
        )
        self.act = nn.LeakyReLU(0.2)
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, a=0.0, mode="fan_in")
            with torch.no_grad():
                conv.weight.mul_(0.1)  # small initial residuals (paper, section 3.3)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs[:-1]:
            features.append(self.act(conv(torch.cat(features, dim=1))))
        out = self.convs[-1](torch.cat(features, dim=1))
        return x + self.residual_scale * out


class _RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside a scaled residual."""

    def __init__(self, features: int, growth: int, residual_scale: float) -> None:
        super().__init__()
        self.residual_scale = residual_scale
        self.blocks = nn.Sequential(
            *(_DenseBlock(features, growth, residual_scale) for _ in range(3))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.residual_scale * self.blocks(x)


class RRDBNet(nn.Module):
    """ESRGAN RRDBNet generator.

    Parameters: ``in_channels`` (1; 3 = 2.5D), ``out_channels`` (1), ``scale`` (2, 3, 4, 8;
    default 4 as in the paper), ``num_blocks`` (6; paper 23), ``num_features`` (64),
    ``growth_channels`` (32), ``residual_scale`` (0.2).
    """

    supported_scales: ClassVar[tuple[int, ...]] = (2, 3, 4, 8)
    pad_multiple: int = 1

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        scale: int = 4,
        num_blocks: int = 6,
        num_features: int = 64,
        growth_channels: int = 32,
        residual_scale: float = 0.2,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = check_channels(in_channels, out_channels)
        self.scale = check_choice("scale", scale, self.supported_scales)
        blocks = check_int("num_blocks", num_blocks)
        nf = check_int("num_features", num_features)
        gc = check_int("growth_channels", growth_channels)
        beta = check_float("residual_scale", residual_scale, 0.0, 1.0)
        self.conv_first = nn.Conv2d(self.in_channels, nf, 3, 1, 1)
        self.body = nn.Sequential(*(_RRDB(nf, gc, beta) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.factors = [3] if self.scale == 3 else [2] * (self.scale.bit_length() - 1)
        self.up_convs = nn.ModuleList(nn.Conv2d(nf, nf, 3, 1, 1) for _ in self.factors)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, self.out_channels, 3, 1, 1)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk of RRDBs with a long skip, then nearest-upsample + conv stages."""
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for factor, conv in zip(self.factors, self.up_convs, strict=True):
            feat = self.act(conv(F.interpolate(feat, scale_factor=factor, mode="nearest")))
        return self.conv_last(self.act(self.conv_hr(feat)))
