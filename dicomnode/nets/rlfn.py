"""RLFN: Residual Local Feature Network for efficient super-resolution.

Kong, Li, Liu, Li, Wang, Song, Fang, Wang, "Residual Local Feature Network for Efficient
Super-Resolution", CVPR Workshops 2022 (arXiv:2205.07514); winner of the NTIRE 2022 efficient
super-resolution challenge (runtime track).

Why this design is cheap: each residual local feature block (RLFB) is three 3x3 conv + LeakyReLU
(0.05) layers with a local residual, a 1x1 conv and an enhanced spatial attention (ESA) unit. RLFN
drops the hierarchical feature-distillation concatenations of RFDN/IMDN (memory traffic that costs
runtime but little quality) and keeps ESA, whose attention map is computed at a strided, max-pooled
low resolution and so costs almost nothing. All features stay at the input resolution; a single
3x3 conv + PixelShuffle upsamples at the very end.

Paper size (the defaults): 52 features, 6 blocks, 16 ESA channels. Scales
2, 3 and 4 as in the paper; x8 uses the same single conv + PixelShuffle(8) tail (64 sub-pixel
channels), which keeps all computation at low resolution.

``base = "zero_filled"`` (our addition, for MR acquired with a small matrix) adds the network's
output to the zero-filled k-space interpolation of the input: the net only has to learn what
zero filling cannot give (the missing high frequencies), which the paper's plain PixelShuffle
tail must otherwise learn from scratch, low frequencies included. All computation stays at the
input resolution; the FFTs cost O(n log n) at the output size.

``padding = "circular"`` (our addition, for that base) pads every 3x3 convolution periodically.
Zero-filling is a circular operation: its ringing at one image edge comes from the structures at
the opposite edge (the FFT wraps around). With zero padding the network cannot see across that
wrap and is worst exactly along the edges; with circular padding its receptive field wraps as the
error does. The weights are the same either way, so a zero-padded model can be fine-tuned into a
circular one.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dicomnode.nets._common import check_channels, check_choice, check_int


class _ESA(nn.Module):
    """Enhanced spatial attention, in RLFN's simplified form (no conv_max / conv3_ branch)."""

    def __init__(self, features: int, esa_channels: int, padding: str = "zeros") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, esa_channels, 1)
        self.conv_f = nn.Conv2d(esa_channels, esa_channels, 1)
        self.conv2 = nn.Conv2d(esa_channels, esa_channels, 3, 2, 0)
        self.conv3 = nn.Conv2d(esa_channels, esa_channels, 3, 1, 1, padding_mode=padding)
        self.conv4 = nn.Conv2d(esa_channels, features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.conv1(x)
        low = self.conv2(reduced)
        # The paper pools with a 7x7 window, stride 3. Inputs under 15 px (tiny tiles only) would
        # leave less than 7x7 here, so the window shrinks to fit; larger inputs are unaffected.
        kernel = min(7, low.shape[-2], low.shape[-1])
        low = F.max_pool2d(low, kernel_size=kernel, stride=min(3, kernel))
        low = self.conv3(low)
        low = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        mask = torch.sigmoid(self.conv4(low + self.conv_f(reduced)))
        return x * mask


class _RLFB(nn.Module):
    """Residual local feature block: 3 x (3x3 conv, LeakyReLU 0.05), residual, 1x1 conv, ESA."""

    def __init__(self, features: int, esa_channels: int, padding: str = "zeros") -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(features, features, 3, 1, 1, padding_mode=padding),
            nn.LeakyReLU(0.05),
            nn.Conv2d(features, features, 3, 1, 1, padding_mode=padding),
            nn.LeakyReLU(0.05),
            nn.Conv2d(features, features, 3, 1, 1, padding_mode=padding),
            nn.LeakyReLU(0.05),
        )
        self.fuse = nn.Conv2d(features, features, 1)
        self.esa = _ESA(features, esa_channels, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.esa(self.fuse(x + self.convs(x)))


class RLFN(nn.Module):
    """Residual Local Feature Network.

    Parameters: ``in_channels`` (1; 3 = 2.5D), ``out_channels`` (1), ``scale`` (2, 3, 4, 8;
    default 4), ``num_features`` (52), ``num_blocks`` (6), ``esa_channels`` (16), as in the paper;
    ``base`` ("none" or "zero_filled") and ``padding`` ("zeros" or "circular"), see the module.
    """

    supported_scales: ClassVar[tuple[int, ...]] = (2, 3, 4, 8)
    pad_multiple: int = 1

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        scale: int = 4,
        num_features: int = 52,
        num_blocks: int = 6,
        esa_channels: int = 16,
        base: str = "none",
        padding: str = "zeros",
    ) -> None:
        super().__init__()
        self.base = check_choice("base", base, BASES)
        self.padding = check_choice("padding", padding, PADDINGS)
        # The zero-filled base is the FFT of the whole slice: no mirrored rim around it
        # (dicomnode.nets.registry.image_border).
        self.needs_whole_image = self.base == "zero_filled"
        self.in_channels, self.out_channels = check_channels(in_channels, out_channels)
        self.scale = check_choice("scale", scale, self.supported_scales)
        nf = check_int("num_features", num_features)
        blocks = check_int("num_blocks", num_blocks)
        esa = check_int("esa_channels", esa_channels)
        self.conv_first = nn.Conv2d(self.in_channels, nf, 3, 1, 1, padding_mode=padding)
        self.blocks = nn.Sequential(*(_RLFB(nf, esa, padding) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1, padding_mode=padding)
        self.upsample = nn.Sequential(
            nn.Conv2d(nf, self.out_channels * self.scale * self.scale, 3, 1, 1,
                      padding_mode=padding),
            nn.PixelShuffle(self.scale),
        )
        if self.base == "zero_filled":  # start as the zero-filled image exactly
            nn.init.zeros_(self.upsample[0].weight)
            nn.init.zeros_(self.upsample[0].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Low-resolution features with a long skip, one sub-pixel upsampling at the end."""
        feat = self.conv_first(x)
        out = self.upsample(feat + self.conv_body(self.blocks(feat)))
        if self.base == "zero_filled":
            centre = x[:, x.shape[1] // 2: x.shape[1] // 2 + 1]  # 2.5D: the slice itself
            out = out + zero_filled(centre, self.scale)
        return out


BASES = ("none", "zero_filled")
PADDINGS = ("zeros", "circular")


def _centre(full: int, part: int) -> slice:
    start = full // 2 - part // 2  # as dicomnode.degradations: DC term at n // 2
    return slice(start, start + part)


def zero_filled(low: torch.Tensor, factor: int) -> torch.Tensor:
    """Zero-filled k-space interpolation (``dicomnode.degradations.zero_filled``) in torch."""
    height, width = low.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(low.float()), dim=(-2, -1))
    padded = spectrum.new_zeros((*low.shape[:-2], height * factor, width * factor))
    padded[..., _centre(height * factor, height), _centre(width * factor, width)] = spectrum
    full = torch.fft.ifft2(torch.fft.ifftshift(padded, dim=(-2, -1)))
    return (full.abs() * (factor * factor)).to(low.dtype)
