"""The explicit registry of network families, shared by the node and the training module.

A model card names an architecture and its parameters; :func:`build_network` turns that pair into
the same ``torch.nn.Module`` wherever it is called, so weights trained by ``dicomnode-train`` load
into the network the node builds. Every family is imported here by name, one line each (no star
imports, no registration as a side effect of importing a module), so a missing family is an
ImportError on the line that names it rather than a silently shorter registry.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from torch import nn

from dicomnode.errors import ModelError
from dicomnode.nets.conv_autoencoder import ConvAutoencoder
from dicomnode.nets.dncnn import DnCNN
from dicomnode.nets.ffdnet import FFDNet
from dicomnode.nets.nafnet import NAFNet
from dicomnode.nets.rlfn import RLFN
from dicomnode.nets.rrdb import RRDBNet
from dicomnode.nets.srresnet import SRGANDiscriminator, SRResNet
from dicomnode.nets.unet_pix2pix import PatchGANDiscriminator, UNetPix2PixGenerator

Role = Literal["super-resolution", "denoise", "discriminator"]
ROLES: tuple[str, ...] = get_args(Role)


@dataclass(frozen=True)
class ArchitectureInfo:
    """One registered family: its name in model cards, its class, what it is for."""

    name: str
    cls: type[nn.Module]
    role: Role
    scales: tuple[int, ...]
    summary: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"{self.name}: role {self.role!r} is not one of {ROLES}")

    def default_params(self) -> dict[str, Any]:
        """The constructor's parameters with their defaults (what an empty params dict means)."""
        return {
            key: p.default
            for key, p in inspect.signature(self.cls).parameters.items()
            if p.default is not inspect.Parameter.empty
        }


def _info(
    name: str, cls: type[nn.Module], role: Role, summary: str
) -> tuple[str, ArchitectureInfo]:
    scales: tuple[int, ...] = cls.supported_scales  # type: ignore[attr-defined]
    return name, ArchitectureInfo(name=name, cls=cls, role=role, scales=scales, summary=summary)


ARCHITECTURES: dict[str, ArchitectureInfo] = dict(
    [
        _info(
            "unet_pix2pix",
            UNetPix2PixGenerator,
            "super-resolution",
            "pix2pix U-Net generator (Isola 2017); scale 1 is image-to-image, >1 upsamples first",
        ),
        _info(
            "patchgan",
            PatchGANDiscriminator,
            "discriminator",
            "70x70 PatchGAN discriminator for pix2pix (Isola 2017), one logit per patch",
        ),
        _info(
            "srresnet",
            SRResNet,
            "super-resolution",
            "SRResNet / SRGAN generator (Ledig 2017): residual blocks, PixelShuffle upsampling",
        ),
        _info(
            "srgan_discriminator",
            SRGANDiscriminator,
            "discriminator",
            "SRGAN discriminator (Ledig 2017) with adaptive pooling for any patch size",
        ),
        _info(
            "rrdb",
            RRDBNet,
            "super-resolution",
            "ESRGAN RRDBNet (Wang 2018): residual-in-residual dense blocks, no BatchNorm",
        ),
        _info(
            "rlfn",
            RLFN,
            "super-resolution",
            "Residual Local Feature Network (Kong 2022), NTIRE 2022 efficient SR winner",
        ),
        _info(
            "conv_autoencoder",
            ConvAutoencoder,
            "denoise",
            "convolutional denoising autoencoder without skips (Gondara 2016), the seed baseline",
        ),
        _info(
            "dncnn",
            DnCNN,
            "denoise",
            "DnCNN (Zhang 2017): 17-layer conv-BN-ReLU net predicting the noise residual",
        ),
        _info(
            "ffdnet",
            FFDNet,
            "denoise",
            "blind FFDNet (Zhang 2018): plain conv-ReLU stack on 2x2-unshuffled pixels, residual",
        ),
        _info(
            "nafnet",
            NAFNet,
            "denoise",
            "NAFNet (Chen 2022): activation-free U-shaped restorer with SimpleGate, small width",
        ),
    ]
)


def list_architectures() -> list[ArchitectureInfo]:
    """Every registered family, in registration order (generators before their discriminators)."""
    return list(ARCHITECTURES.values())


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_type(arch: str, key: str, value: Any, default: Any) -> None:
    """Reject values whose type differs from the default's (TOML gives lists for tuples)."""
    if isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, expected = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    elif isinstance(default, str):
        ok, expected = isinstance(value, str), "a string"
    elif isinstance(default, tuple):
        ok, expected = isinstance(value, list | tuple), "a list"
    else:
        return
    if not ok:
        raise ModelError(
            f"architecture {arch!r}: parameter {key!r} = {value!r} is invalid; expected {expected}"
        )


def build_network(name: str, params: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the network ``name`` with ``params`` (missing keys take the family's defaults).

    Raises :class:`~dicomnode.errors.ModelError` for an unknown name (with a close-match
    suggestion), an unknown parameter, a value of the wrong type or range, or an unsupported
    scale; each message names the architecture, the parameter and the value.
    """
    names = list(ARCHITECTURES)
    if name not in ARCHITECTURES:
        raise ModelError(
            f"unknown architecture {name!r}{_suggest(str(name), names)} "
            f"(registered: {', '.join(names)})"
        )
    info = ARCHITECTURES[name]
    if params is not None and not isinstance(params, Mapping):
        raise ModelError(
            f"architecture {name!r}: parameters must be a table of name = value, "
            f"got {type(params).__name__}"
        )
    kwargs = dict(params or {})
    defaults = info.default_params()

    if "scale" in kwargs and "scale" not in defaults:
        # Denoisers and discriminators work at scale 1 only; a card may still say so explicitly.
        scale = kwargs.pop("scale")
        if scale != 1 or isinstance(scale, bool):
            raise ModelError(
                f"architecture {name!r}: parameter 'scale' = {scale!r} is not supported; "
                f"supported scales: {', '.join(map(str, info.scales))}"
            )

    unknown = [key for key in kwargs if key not in defaults]
    if unknown:
        key = str(unknown[0])
        raise ModelError(
            f"architecture {name!r}: unknown parameter {key!r}{_suggest(key, list(defaults))} "
            f"(accepted: {', '.join(defaults)})"
        )
    for key, value in kwargs.items():
        _check_type(name, key, value, defaults[key])

    scale = kwargs.get("scale", defaults.get("scale", 1))
    if scale not in info.scales:
        raise ModelError(
            f"architecture {name!r}: parameter 'scale' = {scale!r} is not supported; "
            f"supported scales: {', '.join(map(str, info.scales))}"
        )
    try:
        return info.cls(**kwargs)
    except ModelError as exc:
        raise ModelError(f"architecture {name!r}: {exc}") from exc


IMAGE_BORDER = 8
"""Pixels of mirrored image put around each slice before a network (and cropped after)."""


def image_border(network: nn.Module) -> int:
    """How many mirrored pixels the node and the evaluation put around a slice for ``network``.

    A convolution zero-pads at the image edge, where training patches, cut from inside images,
    rarely had an edge: a denoiser left the first two columns of a radiograph's blank border
    4-9 times noisier than the rest (docs/MODELS.md, ``xr-denoise``). Mirroring 8 pixels
    gives it context there. Not for a network whose output depends on the whole image's
    periodic spectrum (``needs_whole_image``: RLFN with a zero-filled k-space base), which was
    trained on whole slices and whose base a mirrored rim would change.
    """
    return 0 if getattr(network, "needs_whole_image", False) else IMAGE_BORDER
