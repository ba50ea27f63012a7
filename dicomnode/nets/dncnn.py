"""DnCNN residual denoiser.

Zhang, Zuo, Chen, Meng, Zhang, "Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for
Image Denoising", IEEE TIP 26(7), 2017 (arXiv:1608.03981), section III.

A plain stack of 3x3 convolutions: conv+ReLU, (depth - 2) x conv+BatchNorm+ReLU, conv. It predicts
the noise, not the image (residual learning): the noise is a simpler function than the clean image
and BatchNorm plus the residual target made deep plain CNNs train fast and well. The output is the
input minus the predicted noise. Paper: depth 17, 64 features (the defaults here; the network is
small, 0.56 M parameters). With a 2.5D input (neighbouring slices as channels) the noise is
subtracted from the centre slice.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from dicomnode.nets._common import check_channels, check_int, residual_source


class DnCNN(nn.Module):
    """DnCNN: predict the noise residual, return input minus residual.

    Parameters: ``in_channels`` (1; 3 = 2.5D), ``out_channels`` (1), ``depth`` (17, the paper's
    depth for a known noise level), ``num_features`` (64).
    """

    supported_scales: ClassVar[tuple[int, ...]] = (1,)
    pad_multiple: int = 1

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 17,
        num_features: int = 64,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = check_channels(in_channels, out_channels)
        self.scale = 1
        check_int("depth", depth, minimum=2)
        nf = check_int("num_features", num_features)
        layers: list[nn.Module] = [nn.Conv2d(self.in_channels, nf, 3, 1, 1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(nf, nf, 3, 1, 1, bias=False), nn.BatchNorm2d(nf), nn.ReLU()]
        layers.append(nn.Conv2d(nf, self.out_channels, 3, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clean estimate = noisy input (centre slice for 2.5D) minus the predicted noise."""
        return residual_source(x, self.out_channels) - self.body(x)
