"""NAFNet: a nonlinear-activation-free U-shaped restoration network, used here for denoising.

Chen, Chu, Zhang, Sun, "Simple Baselines for Image Restoration", ECCV 2022 (arXiv:2204.04676).

Why this design is cheap: the NAFNet block keeps only what the ablations in the paper showed to
pay for itself: LayerNorm, 1x1 and 3x3 depth-wise convolutions, a SimpleGate (split the channels
in two halves and multiply them, replacing GELU and other nonlinearities), simplified channel
attention (global average pool and a 1x1 conv, no sigmoid, no bottleneck MLP) and learnable
residual scales initialised to zero. Most computation happens at the coarser levels of a U-shaped
encoder-decoder (strided 2x2 conv down, 1x1 conv + PixelShuffle up, additive skips), and a global
residual means the network only predicts the correction to its input.

Paper size for SIDD denoising: width 32 (NAFNet-32) or 64, encoder blocks (2, 2, 4, 8), 12 middle
blocks, decoder blocks (2, 2, 2, 2). The small default here is width 16, encoder (1, 1, 1, 2),
2 middle blocks, decoder (1, 1, 1, 1). Input sizes must be multiples of
``2**len(encoder_blocks)`` (``pad_multiple``); the inference tiler pads to that. With a 2.5D input
the correction is added to the centre slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dicomnode.errors import ModelError
from dicomnode.nets._common import (
    check_channels,
    check_float,
    check_input_multiple,
    check_int,
    check_int_sequence,
    no_autocast,
    residual_source,
)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of an (N, C, H, W) tensor.

    Statistics are computed in float32 even under bf16/fp16 autocast, where a mean of squares in
    half precision loses too much. One fused ``layer_norm`` over the last axis of the NHWC view:
    with channels_last memory (how the engine runs networks) that view is contiguous, and the
    norm is one pass instead of the ~8 elementwise passes of mean, variance and affine spelled
    out. ``ct-denoise``, one 528x528 tile on 2 threads, 5 alternating rounds: fp32 436 -> 404
    ms, bf16 autocast 358 -> 238 ms (now 1.7x faster than fp32, where it was slower); fp32
    outputs equal within 5e-8 of the range. Parameters keep their (1, C, 1, 1) shape.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps
        self.channels = channels  # a Python int: the ONNX export needs a static shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.float().permute(0, 2, 3, 1)  # (N, H, W, C): normalise over C
        y = F.layer_norm(pixels, (self.channels,), self.weight.reshape(-1).float(),
                         self.bias.reshape(-1).float(), self.eps)
        return y.permute(0, 3, 1, 2).to(x.dtype)


class SimpleGate(nn.Module):
    """Split the channels into two halves and multiply them: a nonlinearity without activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class NAFBlock(nn.Module):
    """Norm, 1x1 conv, 3x3 depth-wise conv, SimpleGate, channel attention, 1x1 conv; then an FFN.

    Both halves end in a residual scaled by a learnable per-channel factor that starts at zero,
    so every block begins as the identity.
    """

    def __init__(
        self, channels: int, dw_expand: int = 2, ffn_expand: int = 2, dropout: float = 0.0
    ) -> None:
        super().__init__()
        dw = channels * dw_expand
        ffn = channels * ffn_expand
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, dw, 1)
        self.conv2 = nn.Conv2d(dw, dw, 3, 1, 1, groups=dw)
        self.gate = SimpleGate()
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.conv3 = nn.Conv2d(dw // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, ffn, 1)
        self.conv5 = nn.Conv2d(ffn // 2, channels, 1)
        self.dropout1 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.gate(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + self.dropout1(x) * self.beta
        x = self.conv5(self.gate(self.conv4(self.norm2(y))))
        return y + self.dropout2(x) * self.gamma


class NAFNet(nn.Module):
    """NAFNet U-shaped denoiser.

    Parameters: ``in_channels`` (1; 3 = 2.5D), ``out_channels`` (1), ``width`` (16; paper 32/64),
    ``encoder_blocks`` ((1, 1, 1, 2); paper (2, 2, 4, 8)), ``middle_blocks`` (2; paper 12),
    ``decoder_blocks`` ((1, 1, 1, 1); paper (2, 2, 2, 2); same length as ``encoder_blocks``,
    listed from the coarsest level up, whereas ``encoder_blocks`` is listed from the finest down),
    ``dropout`` (0.0).
    """

    supported_scales: ClassVar[tuple[int, ...]] = (1,)
    pad_multiple: int = 2**4

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = 16,
        encoder_blocks: Sequence[int] = (1, 1, 1, 2),
        middle_blocks: int = 2,
        decoder_blocks: Sequence[int] = (1, 1, 1, 1),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = check_channels(in_channels, out_channels)
        self.scale = 1
        chan = check_int("width", width)
        enc = check_int_sequence("encoder_blocks", encoder_blocks)
        dec = check_int_sequence("decoder_blocks", decoder_blocks)
        middle = check_int("middle_blocks", middle_blocks, minimum=0)
        drop = check_float("dropout", dropout, 0.0, 1.0)
        if len(enc) != len(dec):
            raise ModelError(
                f"parameter 'decoder_blocks' = {list(dec)} must have as many levels as "
                f"'encoder_blocks' = {list(enc)}"
            )
        self.pad_multiple = 2 ** len(enc)

        self.intro = nn.Conv2d(self.in_channels, chan, 3, 1, 1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for n in enc:
            self.encoders.append(nn.Sequential(*(NAFBlock(chan, dropout=drop) for _ in range(n))))
            self.downs.append(nn.Conv2d(chan, chan * 2, 2, 2))
            chan *= 2
        self.middle = nn.Sequential(*(NAFBlock(chan, dropout=drop) for _ in range(middle)))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for n in dec:  # listed from the coarsest level, as in the paper's code
            self.ups.append(
                nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2))
            )
            chan //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(chan, dropout=drop) for _ in range(n))))
        self.ending = nn.Conv2d(chan, self.out_channels, 3, 1, 1)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """U-shaped body with additive skips; the output is input (centre slice) + correction.

        Under bf16/fp16 autocast the full-resolution level (intro, first encoder, last decoder,
        ending) still runs in fp32: its features carry HU/1000-sized values, which bf16 rounds
        in ~4 HU steps, the size of the CT noise being removed. All in bf16, ``ct-denoise`` lost
        0.14-0.21 dB on the GE head CT; with this level in fp32, 0.01 dB, and it ran 1.23x
        faster than fp32 (one 528x528 tile, 2 threads; docs/BENCHMARKS.md, "Pareto").
        """
        check_input_multiple(inp, self.pad_multiple, "nafnet")
        device = inp.device.type
        with no_autocast(device):
            x = self.encoders[0](self.intro(inp.to(self.intro.weight.dtype)))
        skips = [x]
        x = self.downs[0](x)
        for encoder, down in zip(self.encoders[1:], self.downs[1:], strict=True):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle(x)
        last = len(self.decoders) - 1
        for level, (up, decoder) in enumerate(zip(self.ups, self.decoders, strict=True)):
            x = up(x)
            if level < last:
                x = decoder(x + skips.pop())
                continue
            with no_autocast(device):
                skip = skips.pop()
                x = self.ending(decoder(x.to(skip.dtype) + skip))
        return residual_source(inp, self.out_channels) + x.to(inp.dtype)
