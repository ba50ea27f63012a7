"""Training losses: pixel (L1, MSE), SSIM, adversarial (BCE and relativistic), perceptual.

Pixel and SSIM losses are the default for diagnostic output: GAN and perceptual losses make
images look sharper by inventing plausible structure, which a radiologist cannot tell from
anatomy. They are here to reproduce the seed systems (pix2pix, SRGAN, ESRGAN) and compare.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F


def _gaussian_window(channels: int, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_torch(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM with an 11x11 Gaussian window (sigma 1.5), valid region, as in Wang et al.

    Differentiable; agrees with scikit-image's ``structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)`` up to its border handling.
    """
    x, y = x.float(), y.float()
    channels = x.shape[1]
    window = _gaussian_window(channels).to(x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def adversarial_g(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str
                  ) -> torch.Tensor:
    """Generator's adversarial loss: plain BCE (pix2pix, SRGAN) or relativistic average (ESRGAN)."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return 0.5 * (F.binary_cross_entropy_with_logits(real_rel, torch.zeros_like(real_rel))
                  + F.binary_cross_entropy_with_logits(fake_rel, torch.ones_like(fake_rel)))


def adversarial_d(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str
                  ) -> torch.Tensor:
    """Discriminator's loss for the same two kinds."""
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    if kind == "bce":
        return 0.5 * (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                      + F.binary_cross_entropy_with_logits(fake_logits,
                                                           torch.zeros_like(fake_logits)))
    real_rel = real_logits - fake_logits.mean()
    fake_rel = fake_logits - real_logits.mean()
    return 0.5 * (F.binary_cross_entropy_with_logits(real_rel, torch.ones_like(real_rel))
                  + F.binary_cross_entropy_with_logits(fake_rel, torch.zeros_like(fake_rel)))


# VGG19 "features" layout (torchvision's key names, so its weights convert to safetensors 1:1).
_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512)


class PerceptualLoss(nn.Module):
    """L1 between VGG19 features (before the activation of conv ``layer``), frozen weights.

    Weights come only from a local safetensors file with keys ``features.N.weight`` /
    ``features.N.bias`` (torchvision's layout): nothing is downloaded, nothing is unpickled.
    Grey images are repeated to three channels and standardised with the ImageNet statistics.
    """

    def __init__(self, weights: str | Path, layer: int = 34) -> None:
        super().__init__()
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"perceptual loss weights {path} not found: give a local safetensors file of "
                "VGG19 features (keys features.N.weight/bias), or set loss.perceptual = 0")
        state = load_file(str(path))
        layers: list[nn.Module] = []
        channels, index = 3, 0
        for item in _VGG19:
            if index > layer:
                break
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                index += 1
                continue
            conv = nn.Conv2d(channels, int(item), 3, padding=1)
            conv.weight.data.copy_(state[f"features.{index}.weight"])
            conv.bias.data.copy_(state[f"features.{index}.bias"])
            layers.append(conv)
            channels = int(item)
            index += 1
            if index <= layer:
                layers.append(nn.ReLU())
                index += 1
        self.features = nn.Sequential(*layers).eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        def feats(t: torch.Tensor) -> torch.Tensor:
            t = t.float().repeat(1, 3, 1, 1) if t.shape[1] == 1 else t.float()
            return self.features((t - self.mean) / self.std)

        return F.l1_loss(feats(x), feats(y))
