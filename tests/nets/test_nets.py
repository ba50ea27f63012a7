"""Tests of dicomnode.nets: registry, output shapes, parameter errors, precision, MAC counting.

Every family is built with tiny widths and depths (``TINY``) on small non-square inputs so that
the whole file runs in seconds on two CPU cores; the shapes and code paths are those of the
default sizes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dicomnode.errors import ModelError
from dicomnode.nets import ARCHITECTURES, ArchitectureInfo, build_network, list_architectures
from dicomnode.nets.flops import count_macs
from dicomnode.nets.registry import ROLES

H, W = 16, 24  # non-square, a multiple of every tiny network's pad_multiple

TINY: dict[str, dict[str, object]] = {
    "unet_pix2pix": {"num_downs": 3, "base_channels": 4},
    "patchgan": {"base_channels": 4, "n_layers": 2},
    "srresnet": {"num_blocks": 1, "num_features": 8},
    "srgan_discriminator": {"base_channels": 4, "pool_size": 2, "hidden": 8},
    "rrdb": {"num_blocks": 1, "num_features": 8, "growth_channels": 4},
    "rlfn": {"num_features": 8, "num_blocks": 1, "esa_channels": 4},
    "conv_autoencoder": {"levels": 4, "base_channels": 4},
    "dncnn": {"depth": 3, "num_features": 8},
    "ffdnet": {"depth": 3, "num_features": 8},
    "nafnet": {"width": 4, "encoder_blocks": [1, 1], "middle_blocks": 1, "decoder_blocks": [1, 1]},
}

EXPECTED_FAMILIES = {
    "unet_pix2pix": "super-resolution",
    "patchgan": "discriminator",
    "srresnet": "super-resolution",
    "srgan_discriminator": "discriminator",
    "rrdb": "super-resolution",
    "rlfn": "super-resolution",
    "conv_autoencoder": "denoise",
    "dncnn": "denoise",
    "ffdnet": "denoise",
    "nafnet": "denoise",
}

GENERATORS = [i.name for i in list_architectures() if i.role != "discriminator"]
DISCRIMINATORS = [i.name for i in list_architectures() if i.role == "discriminator"]
SHAPE_CASES = [
    (name, scale, cin)
    for name in GENERATORS
    for scale in ARCHITECTURES[name].scales
    for cin in (1, 3)
]


def tiny(name: str, **extra: object) -> nn.Module:
    return build_network(name, {**TINY[name], **extra})


def scale_params(name: str, scale: int) -> dict[str, object]:
    return {"scale": scale} if "scale" in ARCHITECTURES[name].default_params() else {}


# --- registry -------------------------------------------------------------------------------


def test_registry_lists_every_family_with_role() -> None:
    infos = list_architectures()
    assert {i.name: i.role for i in infos} == EXPECTED_FAMILIES
    assert set(TINY) == set(ARCHITECTURES), "every family needs a tiny test configuration"
    for info in infos:
        assert isinstance(info, ArchitectureInfo)
        assert info.role in ROLES
        assert info.scales and all(isinstance(s, int) and s >= 1 for s in info.scales)
        assert info.summary and "\n" not in info.summary
        assert isinstance(info.cls.pad_multiple, int)
        if info.role != "super-resolution":
            assert info.scales == (1,)


def test_required_scales_are_supported() -> None:
    for name in ("srresnet", "rrdb", "rlfn", "unet_pix2pix"):
        assert {2, 3, 4, 8} <= set(ARCHITECTURES[name].scales), name


@pytest.mark.parametrize("name", sorted(EXPECTED_FAMILIES))
def test_defaults_build(name: str) -> None:
    with torch.device("meta"):  # no memory, no arithmetic: only the construction is checked
        model = build_network(name, {})
    assert isinstance(model.pad_multiple, int) and model.pad_multiple >= 1


def test_same_name_and_params_give_identical_networks() -> None:
    torch.manual_seed(0)
    a = tiny("rrdb", scale=2).state_dict()
    torch.manual_seed(0)
    b = tiny("rrdb", scale=2).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "scale", "in_channels"), SHAPE_CASES)
def test_generator_output_shape(name: str, scale: int, in_channels: int) -> None:
    model = tiny(name, in_channels=in_channels, **scale_params(name, scale)).eval()
    x = torch.rand(2, in_channels, H, W)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1, H * scale, W * scale)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", GENERATORS + DISCRIMINATORS)
def test_train_step_backpropagates(name: str) -> None:
    model = tiny(name).train()
    x = torch.rand(2, 1, H, W)
    model(x).square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("name", ["dncnn", "nafnet"])
def test_residual_denoiser_2p5d_output_is_centre_slice_plus_correction(name: str) -> None:
    model = tiny(name, in_channels=3).eval()
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    x = torch.rand(1, 3, H, W)
    with torch.no_grad():
        assert torch.equal(model(x), x[:, 1:2])


def test_input_size_not_a_multiple_of_pad_multiple_is_refused() -> None:
    model = tiny("unet_pix2pix").eval()
    assert model.pad_multiple == 8
    with pytest.raises(ValueError, match="multiple of 8"):
        model(torch.rand(1, 1, 20, 24))


def test_unet_pad_multiple_accounts_for_scale() -> None:
    assert tiny("unet_pix2pix", scale=4).pad_multiple == 2  # 2**3 / 4
    assert tiny("unet_pix2pix", scale=3).pad_multiple == 8
    assert build_network("unet_pix2pix", {"base_channels": 1}).pad_multiple == 128
    assert tiny("nafnet").pad_multiple == 4
    assert tiny("dncnn").pad_multiple == 1


# --- discriminators -------------------------------------------------------------------------


@pytest.mark.parametrize("name", DISCRIMINATORS)
@pytest.mark.parametrize("in_channels", [1, 2])
def test_discriminator_returns_logits(name: str, in_channels: int) -> None:
    model = tiny(name, in_channels=in_channels).eval()
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    nn.init.constant_(last.bias, 5.0)
    for size in ((32, 32), (48, 40)):  # any patch size
        with torch.no_grad():
            y = model(torch.rand(2, in_channels, *size))
        assert y.shape[:2] == (2, 1)
        assert torch.all(y == 5.0), "raw logits: no sigmoid after the last layer"


def test_patchgan_paper_size_gives_30x30_patches_at_256() -> None:
    with torch.device("meta"):
        model = build_network("patchgan", {})
        y = model(torch.zeros(1, 1, 256, 256))
    assert y.shape == (1, 1, 30, 30)


# --- parameter errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "scale"),
    [("rrdb", 5), ("srresnet", 6), ("rlfn", 1), ("unet_pix2pix", 16), ("dncnn", 2)],
)
def test_unsupported_scale_raises_model_error_naming_the_scale(name: str, scale: int) -> None:
    with pytest.raises(ModelError, match=rf"'scale' = {scale} is not supported") as info:
        build_network(name, {"scale": scale})
    assert name in str(info.value)


def test_scale_one_is_accepted_by_denoisers_and_discriminators() -> None:
    assert build_network("dncnn", {**TINY["dncnn"], "scale": 1}).scale == 1
    build_network("patchgan", {**TINY["patchgan"], "scale": 1})


def test_unknown_architecture_suggests_a_close_name() -> None:
    with pytest.raises(ModelError, match=r"unknown architecture 'rrbd'; did you mean 'rrdb'\?"):
        build_network("rrbd", {})
    with pytest.raises(ModelError, match="registered: unet_pix2pix"):
        build_network("transformer9000", {})


def test_unknown_parameter_suggests_a_close_name() -> None:
    with pytest.raises(ModelError, match=r"unknown parameter 'dept'; did you mean 'depth'\?"):
        build_network("dncnn", {"dept": 5})
    with pytest.raises(ModelError, match="must be a table"):
        build_network("dncnn", [("depth", 5)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "params", "parameter"),
    [
        ("dncnn", {"depth": 0}, "depth"),
        ("srresnet", {"num_blocks": "8"}, "num_blocks"),
        ("rrdb", {"scale": 4.0}, "scale"),
        ("rrdb", {"residual_scale": 2.0}, "residual_scale"),
        ("unet_pix2pix", {"norm": "group"}, "norm"),
        ("unet_pix2pix", {"num_downs": True}, "num_downs"),
        ("conv_autoencoder", {"levels": 5}, "levels"),
        ("nafnet", {"encoder_blocks": [1], "decoder_blocks": [1, 1]}, "decoder_blocks"),
        ("nafnet", {"encoder_blocks": "1,1"}, "encoder_blocks"),
        ("dncnn", {"in_channels": 3, "out_channels": 2}, "out_channels"),
        ("rlfn", {"in_channels": 2}, "in_channels"),
    ],
)
def test_invalid_parameter_raises_model_error_naming_it(
    name: str, params: dict[str, object], parameter: str
) -> None:
    with pytest.raises(ModelError, match=rf"architecture '{name}'.*'{parameter}'"):
        build_network(name, params)


def test_tuple_parameters_accept_lists_from_toml() -> None:
    model = build_network("nafnet", {"width": 4, "encoder_blocks": [1], "decoder_blocks": [1]})
    assert model.pad_multiple == 2


# --- precision, memory format, device -------------------------------------------------------


@pytest.mark.parametrize("name", GENERATORS + DISCRIMINATORS)
def test_channels_last_bf16_autocast_on_cpu(name: str) -> None:
    scale = max(ARCHITECTURES[name].scales)
    model = tiny(name, **scale_params(name, scale)).eval().to(memory_format=torch.channels_last)
    x = torch.rand(1, 1, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
    assert y.shape == reference.shape
    assert torch.isfinite(y.float()).all()
    spread = reference.abs().max().clamp_min(1e-3)
    assert (y.float() - reference).abs().max() <= 0.1 * spread


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", GENERATORS)
def test_cuda_forward(name: str) -> None:
    scale = max(ARCHITECTURES[name].scales)
    model = tiny(name, **scale_params(name, scale)).eval().to("cuda")
    x = torch.rand(2, 1, H, W, device="cuda")
    with torch.no_grad():
        y = model(x)
        with torch.autocast("cuda", dtype=torch.float16):
            y16 = model(x)
    assert y.is_cuda and y.shape == (2, 1, H * scale, W * scale)
    assert torch.isfinite(y16.float()).all()


# --- MAC counting ---------------------------------------------------------------------------


def test_count_macs_of_a_single_conv_is_exact() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, (1, 3, 10, 10)) == 10 * 10 * 8 * 3 * 9


def test_count_macs_grouped_strided_transposed_and_linear() -> None:
    grouped = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
    assert count_macs(grouped, (2, 4, 8, 8)) == (2 * 8 * 4 * 4) * 2 * 9
    transposed = nn.ConvTranspose2d(4, 2, 4, 2, 1)
    assert count_macs(transposed, (1, 4, 5, 5)) == (4 * 5 * 5) * 2 * 16
    head = nn.Sequential(nn.Flatten(), nn.Linear(48, 7))
    assert count_macs(head, (3, 4, 4)) == 7 * 48  # (C, H, W) means a batch of one


def test_count_macs_restores_training_mode_and_counts_meta_models() -> None:
    model = tiny("dncnn").train()
    macs = count_macs(model, (1, 1, 8, 8))
    assert model.training
    # DnCNN: first conv 1->8, one 8->8, last 8->1, all 3x3 on 8x8 pixels
    assert macs == 64 * 9 * (1 * 8 + 8 * 8 + 8 * 1)
    with torch.device("meta"):
        meta_model = tiny("dncnn")
    assert count_macs(meta_model, (1, 1, 8, 8)) == macs


def test_rlfn_zero_filled_base_starts_as_the_baseline_and_matches_numpy():
    """base = "zero_filled": the output is zero-filled interpolation plus what the net adds;
    untrained, it adds nothing (zero-initialised tail), so training starts at the baseline."""
    import numpy as np

    from dicomnode.engine.degradations import zero_filled as zero_filled_numpy
    from dicomnode.errors import ModelError
    from dicomnode.nets.rlfn import RLFN, zero_filled

    rng = np.random.default_rng(3)
    for shape in [(32, 32), (33, 31)]:
        image = rng.random(shape)
        ours = zero_filled(torch.tensor(image)[None, None], 2)[0, 0].numpy()
        assert np.allclose(ours, zero_filled_numpy(image, 2), atol=1e-5)
    net = RLFN(scale=2, num_features=8, num_blocks=1, esa_channels=4, base="zero_filled")
    x = torch.rand(2, 1, 24, 20)
    assert torch.allclose(net(x), zero_filled(x, 2), atol=1e-6)
    three = RLFN(in_channels=3, scale=2, num_features=8, num_blocks=1, esa_channels=4,
                 base="zero_filled")
    x3 = torch.rand(1, 3, 16, 16)
    assert torch.allclose(three(x3), zero_filled(x3[:, 1:2], 2), atol=1e-6)  # centre slice
    with pytest.raises(ModelError, match="base"):
        RLFN(scale=2, base="bicubic")


def test_rlfn_circular_padding_sees_across_the_wrap_with_the_same_weights():
    """padding = "circular": an output pixel at one image corner depends on the opposite
    corner, as zero-filling's ringing does; zero padding cannot see it. Same weights either way,
    so a zero-padded model fine-tunes into a circular one."""
    from dicomnode.errors import ModelError
    from dicomnode.nets.rlfn import RLFN

    torch.manual_seed(0)
    params = {"scale": 2, "num_features": 8, "num_blocks": 1, "esa_channels": 4}
    zeros = RLFN(**params).eval()
    circular = RLFN(**params, padding="circular").eval()
    circular.load_state_dict(zeros.state_dict())
    x = torch.rand(1, 1, 96, 96)
    poked = x.clone()
    poked[..., -1, -1] += 10.0
    with torch.no_grad():
        wrap = (circular(poked) - circular(x))[..., :2, :2].abs().max()
        no_wrap = (zeros(poked) - zeros(x))[..., :2, :2].abs().max()
    assert wrap > 1e-4 and no_wrap == 0
    with pytest.raises(ModelError, match="padding"):
        RLFN(**params, padding="reflect")


# --- ffdnet: the fp32 image path under bf16 ------------------------------------------------


def test_ffdnet_keeps_the_image_in_fp32_under_bf16_autocast() -> None:
    """Only the noise estimate is rounded to bf16: an all-zero body returns the input exactly,
    bit for bit, which a network that ran its input through bf16 could not (HU / 1000 rounded to
    bf16 moves by up to ~4 HU)."""
    net = build_network("ffdnet", {"depth": 3, "num_features": 8})
    for conv in net.body:
        if isinstance(conv, nn.Conv2d):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
    x = torch.rand(1, 1, H, W, dtype=torch.float32) * 3.0 + 0.001
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert y.dtype == torch.float32
    assert torch.equal(y, x)
    assert not torch.equal(x.bfloat16().float(), x)  # the check above could have failed


def test_ffdnet_downscale_sets_the_pad_multiple() -> None:
    assert build_network("ffdnet", {"downscale": 4}).pad_multiple == 4
    assert build_network("ffdnet", {"downscale": 1}).pad_multiple == 1
    with pytest.raises(ModelError, match="downscale"):
        build_network("ffdnet", {"downscale": 3})


@pytest.mark.parametrize("channels_last", [False, True])
def test_nafnet_layer_norm_is_the_per_pixel_channel_norm(channels_last: bool) -> None:
    """The fused LayerNorm2d equals mean/variance over each pixel's channels, then the affine,
    forward and backward, in either memory format (the engine runs channels_last)."""
    from dicomnode.nets.nafnet import LayerNorm2d

    torch.manual_seed(3)
    norm = LayerNorm2d(8)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(1, 8, 1, 1))
        norm.bias.copy_(torch.randn(1, 8, 1, 1))
    x = torch.randn(2, 8, 5, 7) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    mean = x.mean(dim=1, keepdim=True)
    var = (x - mean).pow(2).mean(dim=1, keepdim=True)
    expected = (x - mean) * torch.rsqrt(var + norm.eps) * norm.weight + norm.bias
    got = norm(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(got)
    (want_x, want_w) = torch.autograd.grad(expected, (x, norm.weight), grad)
    (got_x, got_w) = torch.autograd.grad(got, (x, norm.weight), grad)
    torch.testing.assert_close(got_x, want_x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_w, want_w, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(x.bfloat16()).dtype == torch.bfloat16


def test_nafnet_keeps_its_full_resolution_level_in_fp32_under_bf16_autocast() -> None:
    """HU-sized features at full resolution stay fp32; the lower levels take bf16's speed."""
    from dicomnode.nets.nafnet import NAFNet

    torch.manual_seed(5)
    net = NAFNet(width=8, encoder_blocks=(1, 1), middle_blocks=1, decoder_blocks=(1, 1)).eval()
    seen: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            seen[name] = output.dtype
        return hook

    for name, module in (("intro", net.intro), ("encoder0", net.encoders[0]),
                         ("middle conv", net.middle[0].conv1),
                         ("decoder_last", net.decoders[-1]),
                         ("ending", net.ending)):
        module.register_forward_hook(record(name))
    x = torch.randn(1, 1, 32, 32)
    with torch.inference_mode():
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = net(x)
    assert seen == {"intro": torch.float32, "encoder0": torch.float32,
                    "middle conv": torch.bfloat16, "decoder_last": torch.float32,
                    "ending": torch.float32}
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=0.05, atol=0.05)
