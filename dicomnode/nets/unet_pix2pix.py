"""pix2pix U-Net generator and 70x70 PatchGAN discriminator.

Isola, Zhu, Zhou, Efros, "Image-to-Image Translation with Conditional Adversarial Networks",
CVPR 2017 (arXiv:1611.07004).

Generator (paper, appendix 6.1.1): an encoder-decoder of 4x4 stride-2 convolutions with skip
connections between mirrored levels. Encoder ``C64-C128-C256-C512-C512-C512-C512-C512`` (no norm on
the first and on the innermost layer, LeakyReLU 0.2), decoder ``CD512-CD1024-CD1024-C1024-C1024-
C512-C256-C128`` (ReLU, dropout 0.5 in the first three decoder layers, doubled widths from the
concatenated skips), tanh output. That is 8 levels for a 256x256 input (bottleneck 1x1). The seed
system used 7 down / 7 up at 256 input (15 layers), so the depth is the ``num_downs`` parameter
(default 7). The paper's full size is ``num_downs=8, base_channels=64``; the default width here is
32 so that inference on a small CPU stays tolerable.

Input sizes must be multiples of ``2**num_downs``; the inference tiler pads tiles to
``pad_multiple`` (see :class:`UNetPix2PixGenerator`).

Super-resolution: with ``scale`` f > 1 the generator first upsamples its input by f (bicubic or
bilinear, ``torch.nn.functional.interpolate`` inside ``forward``) and then translates that image,
as in the seed's 8x radiograph system; the output is f times larger than the input.

Discriminator (paper, appendix 6.1.2): the 70x70 PatchGAN ``C64-C128-C256-C512`` then a 1-channel
convolution, 4x4 kernels, LeakyReLU 0.2, no norm on the first layer. ``n_layers`` = 3 gives the
70x70 receptive field. It returns one logit per patch (no sigmoid: train with
``BCEWithLogitsLoss`` or a least-squares loss). For the conditional GAN give it the condition and
the (real or generated) image concatenated, i.e. ``in_channels`` = condition + output channels.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dicomnode.nets._common import (
    check_channels,
    check_choice,
    check_input_multiple,
    check_int,
)

NORMS = ("batch", "instance")


def _norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm as in the paper, or InstanceNorm (affine-free, as in the authors' code)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class UNetPix2PixGenerator(nn.Module):
    """pix2pix U-Net generator with a configurable depth and optional input upsampling.

    Parameters: ``in_channels`` (1; 3 = 2.5D neighbouring slices), ``out_channels`` (1),
    ``scale`` (1 = image-to-image; 2, 3, 4, 8 = super-resolution), ``num_downs`` (7),
    ``base_channels`` (32; paper 64), ``norm`` ("batch" as in the paper, or "instance"),
    ``num_dropout`` (3: decoder blocks nearest the bottleneck with dropout 0.5),
    ``final_activation`` ("tanh" as in the paper, for intensities scaled to [-1, 1], or "none"),
    ``upsample_mode`` ("bicubic" or "bilinear").
    """

    supported_scales: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 8)
    pad_multiple: int = 2**7

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        scale: int = 1,
        num_downs: int = 7,
        base_channels: int = 32,
        norm: str = "batch",
        num_dropout: int = 3,
        final_activation: str = "tanh",
        upsample_mode: str = "bicubic",
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = check_channels(in_channels, out_channels)
        self.scale = check_choice("scale", scale, self.supported_scales)
        self.num_downs = check_int("num_downs", num_downs, minimum=2)
        base = check_int("base_channels", base_channels)
        check_choice("norm", norm, NORMS)
        check_int("num_dropout", num_dropout, minimum=0)
        check_choice("final_activation", final_activation, ("tanh", "none"))
        self.upsample_mode = check_choice("upsample_mode", upsample_mode, ("bicubic", "bilinear"))
        # The U-Net itself needs multiples of 2**num_downs; after upsampling by `scale` the input
        # needs only what the scale does not already provide.
        unet_multiple = 2**self.num_downs
        self.pad_multiple = unet_multiple // math.gcd(unet_multiple, self.scale)
        self._unet_multiple = unet_multiple

        use_bias = norm == "instance"  # BatchNorm has its own shift
        widths = [base * min(2**i, 8) for i in range(self.num_downs)]
        innermost = self.num_downs - 1

        downs: list[nn.Module] = []
        for i, width in enumerate(widths):
            if i == 0:
                downs.append(nn.Conv2d(self.in_channels, width, 4, 2, 1, bias=use_bias))
                continue
            layers: list[nn.Module] = [
                nn.LeakyReLU(0.2),
                nn.Conv2d(widths[i - 1], width, 4, 2, 1, bias=use_bias or i == innermost),
            ]
            if i != innermost:  # the 1x1 bottleneck is not normalised (paper, appendix 6.1.1)
                layers.append(_norm(norm, width))
            downs.append(nn.Sequential(*layers))
        self.downs = nn.ModuleList(downs)

        # ups[i] undoes downs[i]; it reads the innermost features (i == innermost) or the
        # concatenation of the level below and its skip (2 * widths[i]).
        ups: list[nn.Module] = []
        for i, width in enumerate(widths):
            in_width = width if i == innermost else 2 * width
            if i == 0:
                layers = [nn.ReLU(), nn.ConvTranspose2d(in_width, self.out_channels, 4, 2, 1)]
                if final_activation == "tanh":
                    layers.append(nn.Tanh())
            else:
                layers = [
                    nn.ReLU(),
                    nn.ConvTranspose2d(in_width, widths[i - 1], 4, 2, 1, bias=use_bias),
                    _norm(norm, widths[i - 1]),
                ]
                if innermost - i < num_dropout:
                    layers.append(nn.Dropout(0.5))
            ups.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsample by ``scale`` if > 1, then run the U-Net; skips join mirrored levels."""
        check_input_multiple(x, self.pad_multiple, "unet_pix2pix")
        if self.scale > 1:
            x = F.interpolate(
                x, scale_factor=self.scale, mode=self.upsample_mode, align_corners=False
            )
        skips: list[torch.Tensor] = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = skips.pop()  # bottleneck, not concatenated with itself
        for i in range(self.num_downs - 1, -1, -1):
            x = self.ups[i](x)
            if i > 0:
                x = torch.cat([skips.pop(), x], dim=1)
        return x


class PatchGANDiscriminator(nn.Module):
    """70x70 PatchGAN: a fully convolutional net that classifies each overlapping patch.

    Parameters: ``in_channels`` (1; condition + image channels for the conditional GAN),
    ``base_channels`` (64, as in the paper), ``n_layers`` (3 = 70x70 receptive field; 1 = 16x16,
    5 = 286x286 in the paper), ``norm`` ("batch" or "instance"). Output: logits (N, 1, h, w).
    """

    supported_scales: ClassVar[tuple[int, ...]] = (1,)
    pad_multiple: int = 1

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels)
        base = check_int("base_channels", base_channels)
        check_int("n_layers", n_layers)
        check_choice("norm", norm, NORMS)
        use_bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(self.in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2)]
        width = base
        for n in range(1, n_layers + 1):
            next_width = base * min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last feature layer keeps the resolution
            layers += [
                nn.Conv2d(width, next_width, 4, stride, 1, bias=use_bias),
                _norm(norm, next_width),
                nn.LeakyReLU(0.2),
            ]
            width = next_width
        layers.append(nn.Conv2d(width, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One real/fake logit per receptive-field patch."""
        return self.net(x)
