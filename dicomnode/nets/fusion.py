"""Fold BatchNorm into the convolution before it, for inference.

A trained network in eval mode applies BatchNorm as a fixed per-channel scale and shift; folding
that into the preceding convolution's weights and bias gives the same outputs (to rounding) with
one pass over the feature map less per layer. On this project's 2-core CPU a DnCNN-12 of 64
features ran a 512x512 slice in bf16 12-15 % faster folded (1560 -> 1370 ms on one contended
thread). The arithmetic is torch's own (``torch.nn.utils.fusion.fuse_conv_bn_eval``); this module
only finds the pairs.
"""

from __future__ import annotations

from itertools import pairwise

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(network: nn.Module) -> int:
    """Replace every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an
    ``nn.Sequential`` with one folded ``Conv2d`` (the BatchNorm becomes ``nn.Identity``, so
    indices and the module tree keep their shape). Only for a network in eval mode: training
    would update the statistics the fold has frozen. Returns the number of pairs folded."""
    if network.training:
        raise ValueError("fold_batchnorm needs a network in eval mode (call .eval() first)")
    folded = 0
    for module in network.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in pairwise(names):
            conv, norm = module._modules[first], module._modules[second]
            if (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
                    and norm.track_running_stats and conv.out_channels == norm.num_features):
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
                folded += 1
    return folded
