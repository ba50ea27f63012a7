"""Tiled, batched inference; devices and precision; 2.5D neighbours through enhance_series.

Networks are the registry's families at tiny widths with random weights, on small non-square
images, so the file runs in seconds on two CPU cores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from torch import nn

from dicomnode.engine import devices
from dicomnode.engine.cards import load_card
from dicomnode.engine.devices import choose_precision, resolve_device
from dicomnode.engine.inference import (
    CPU_PASS_PIXELS,
    blend_window,
    infer,
    mirror_border,
    pass_size,
    plan_tiles,
)
from dicomnode.enhance import derivation_for, enhance_series
from dicomnode.errors import DeviceError
from dicomnode.nets import ARCHITECTURES, build_network, image_border, list_architectures
from dicomnode.series import scan
from tests.conftest import MR_DIR
from tests.model_factory import TINY_DNCNN, write_model

TINY_GENERATORS: dict[str, dict[str, object]] = {
    "unet_pix2pix": {"num_downs": 3, "base_channels": 4, "final_activation": "none"},
    "srresnet": {"num_blocks": 1, "num_features": 4},
    "rrdb": {"num_blocks": 1, "num_features": 4, "growth_channels": 4},
    "rlfn": {"num_features": 4, "num_blocks": 1, "esa_channels": 4},
    "conv_autoencoder": {"levels": 4, "base_channels": 4},
    "dncnn": {"depth": 3, "num_features": 4},
    "ffdnet": {"depth": 3, "num_features": 4},
    "nafnet": {"width": 4, "encoder_blocks": [1, 1], "middle_blocks": 1,
               "decoder_blocks": [1, 1]},
}


def tiny(name: str, seed: int = 0, **extra: object) -> nn.Module:
    torch.manual_seed(seed)
    return build_network(name, {**TINY_GENERATORS[name], **extra}).eval()


def images(count: int, height: int, width: int, channels: int | None = None) -> np.ndarray:
    shape = (count, height, width) if channels is None else (count, channels, height, width)
    return np.random.default_rng(7).random(shape, dtype=np.float32)


# --- tiling plan and blending ---------------------------------------------------------------


def test_every_generator_is_covered() -> None:
    generators = {i.name for i in list_architectures() if i.role != "discriminator"}
    assert generators == set(TINY_GENERATORS)


def test_small_images_are_one_tile_padded_to_the_multiple() -> None:
    plan = plan_tiles(37, 53, multiple=16, tile=512, overlap=32)
    assert plan.count == 1
    assert (plan.rows.padded, plan.columns.padded) == (48, 64)
    assert (plan.rows.extent, plan.columns.extent) == (48, 64)


@pytest.mark.parametrize("multiple", [1, 4, 16])
def test_tiles_cover_the_image_at_multiples_of_the_pad_multiple(multiple: int) -> None:
    plan = plan_tiles(1955, 1841, multiple=multiple, tile=512, overlap=32)
    for axis, length in ((plan.rows, 1955), (plan.columns, 1841)):
        assert axis.padded % multiple == 0 and axis.padded >= length
        assert axis.extent <= 512 and axis.extent % multiple == 0
        assert all(s % multiple == 0 for s in axis.starts)
        assert axis.starts[0] == 0 and axis.starts[-1] + axis.extent == axis.padded
        gaps = np.diff(axis.starts)
        assert np.all(axis.extent - gaps >= 32)  # every neighbour overlaps by at least 32


def test_blend_windows_of_neighbours_sum_to_one_across_the_overlap() -> None:
    extent, overlap = 64, 16
    left = blend_window(extent, overlap, left=False, right=True)
    right = blend_window(extent, overlap, left=True, right=False)
    common = left[extent - overlap:] + right[:overlap]
    np.testing.assert_allclose(common, 1.0, atol=1e-6)
    assert left[:extent - overlap].min() == 1.0
    assert left[-overlap // 4:].max() == 0.0  # a tile's edge pixels (no context) get no weight
    np.testing.assert_array_equal(blend_window(extent, overlap, False, False), 1.0)


# --- infer: shapes, tiles, batches ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY_GENERATORS))
def test_output_shape_for_odd_sizes_every_family(name: str) -> None:
    scales = ARCHITECTURES[name].scales
    scale = 2 if 2 in scales else scales[0]
    extra = {"scale": scale} if "scale" in ARCHITECTURES[name].default_params() else {}
    net = tiny(name, **extra)
    out = infer(images(2, 37, 53), net, tile=None)
    assert out.shape == (2, 37 * scale, 53 * scale) and out.dtype == np.float32
    assert np.isfinite(out).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_tiled_equals_untiled_away_from_the_border_dncnn(channels: int) -> None:
    net = tiny("dncnn", in_channels=channels)
    x = images(2, 200, 300, None if channels == 1 else channels)
    whole = infer(x, net, tile=None)
    tiled = infer(x, net, tile=64, overlap=16, batch_size=5)
    assert whole.shape == tiled.shape == ((2, 200, 300) if channels == 1 else (2, 1, 200, 300))
    whole, tiled = whole.reshape(2, 200, 300), tiled.reshape(2, 200, 300)
    border = 8
    np.testing.assert_allclose(tiled[:, border:-border, border:-border],
                               whole[:, border:-border, border:-border], atol=1e-4, rtol=0)


def test_tiled_equals_untiled_for_super_resolution() -> None:
    # SRResNet's receptive field (9x9 head and tail) needs 12 px of clean context per side:
    # the zero-weight quarter of a 48 px overlap.
    net = tiny("srresnet", scale=2)
    x = images(1, 100, 150)
    whole = infer(x, net, tile=None)
    tiled = infer(x, net, tile=96, overlap=48)
    assert tiled.shape == (1, 200, 300)
    np.testing.assert_allclose(tiled[:, 16:-16, 16:-16], whole[:, 16:-16, 16:-16], atol=1e-4)


def test_tiles_of_a_u_net_start_on_its_down_sampling_grid() -> None:
    net = tiny("conv_autoencoder")  # pad_multiple 4, receptive field larger than the margin
    assert net.pad_multiple > 1
    x = images(1, 150, 170)
    tiled = infer(x, net, tile=64, overlap=32)
    assert tiled.shape == (1, 150, 170) and np.isfinite(tiled).all()


def test_batch_size_does_not_change_the_result() -> None:
    net = tiny("rlfn", scale=2)
    x = images(5, 40, 24)
    np.testing.assert_allclose(infer(x, net, batch_size=1), infer(x, net, batch_size=8),
                               atol=1e-5)


def test_a_large_radiograph_is_processed_in_tiles() -> None:
    class Upsample(nn.Module):
        """x2 by pixel replication, remembering the largest input it was given."""

        in_channels = out_channels = 1
        scale, pad_multiple = 2, 1

        def __init__(self) -> None:
            super().__init__()
            self.largest = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.largest = max(self.largest, x.shape[-2] * x.shape[-1])
            return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)

    net = Upsample()
    x = np.random.default_rng(1).random((1, 1955, 1841), dtype=np.float32)
    out = infer(x, net, tile=512, overlap=32, batch_size=4)
    assert out.shape == (1, 3910, 3682)
    assert net.largest <= 512 * 512
    np.testing.assert_allclose(out[0, ::2, ::2], x[0], atol=1e-5)  # blended without seams


def test_a_mirrored_border_gives_the_network_context_at_the_image_edge() -> None:
    """border = b: the network runs on the slice with b mirrored pixels on each side and the
    rim is cut from its output (x scale), tiled or not; a pointwise network is unchanged."""
    net = tiny("dncnn")
    x = images(2, 50, 70)
    plain = infer(x, net, tile=None)
    bordered = infer(x, net, tile=None, border=8)
    mirrored = np.pad(x, ((0, 0), (8, 8), (8, 8)), mode="reflect")
    np.testing.assert_allclose(bordered, infer(mirrored, net, tile=None)[:, 8:-8, 8:-8],
                               atol=1e-5)
    assert not np.allclose(bordered[:, 0], plain[:, 0], atol=1e-4)  # the edge changed ...
    np.testing.assert_allclose(bordered[:, 20:-20, 20:-20], plain[:, 20:-20, 20:-20],
                               atol=1e-4)  # ... the middle did not
    tiled = infer(x, net, tile=40, overlap=16, border=8)
    np.testing.assert_allclose(tiled, bordered, atol=1e-4)
    sr = tiny("srresnet", scale=2)
    assert infer(x, sr, tile=None, border=8).shape == (2, 100, 140)
    doubled = infer(x, _LimitedMemory(max_pixels=10**9), tile=None, border=8)
    np.testing.assert_allclose(doubled, 2 * x, atol=1e-6)
    recorder = _LimitedMemory(max_pixels=10**9)  # the rim does not push a slice into tiles
    infer(images(1, 64, 64), recorder, tile=64, overlap=16, border=8)
    assert recorder.calls == [(1, 1, 80, 80)]
    small, rim = mirror_border(np.zeros((1, 5, 9), np.float32), 16)
    assert rim == 4 and small.shape == (1, 13, 17)  # as far as the slice allows
    with pytest.raises(ValueError, match="border"):
        infer(x, net, border=-1)


def test_every_family_gets_a_border_but_a_k_space_base() -> None:
    assert image_border(tiny("dncnn")) == image_border(tiny("nafnet")) == 8
    assert image_border(tiny("rlfn", scale=2)) == 8
    k_space = build_network("rlfn", {**TINY_GENERATORS["rlfn"], "scale": 2,
                                     "base": "zero_filled"})
    assert image_border(k_space) == 0


def test_wrong_channel_count_is_refused() -> None:
    with pytest.raises(ValueError, match="in_channels = 3"):
        infer(images(2, 16, 16), tiny("dncnn", in_channels=3))


class _LimitedMemory(nn.Module):
    """Doubles its input; raises out-of-memory above a number of pixels per batch."""

    in_channels = out_channels = scale = pad_multiple = 1

    def __init__(self, max_pixels: int) -> None:
        super().__init__()
        self.max_pixels = max_pixels
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        if x.shape[0] * x.shape[-2] * x.shape[-1] > self.max_pixels:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 2 * x


def test_out_of_memory_halves_the_batch_then_the_tile() -> None:
    x = images(4, 128, 128)  # four 128x128 tiles fit one CPU pass (CPU_PASS_PIXELS)
    net = _LimitedMemory(max_pixels=64 * 64)
    out = infer(x, net, tile=128, overlap=16, batch_size=4)
    np.testing.assert_allclose(out, 2 * x, atol=1e-6)
    batches = [c[0] for c in net.calls]
    assert batches[:3] == [4, 2, 1]
    assert net.calls[-1][-2:] == (64, 64)


def test_a_cpu_pass_holds_no_more_pixels_than_its_cache_serves() -> None:
    """On a CPU a batch of large slices is slower per slice than one at a time (cache), so a
    pass holds at most CPU_PASS_PIXELS; small tiles are still batched, GPUs keep the batch."""
    net = _LimitedMemory(max_pixels=10**9)
    infer(images(3, 512, 512), net, tile=None, batch_size=8)
    assert [c[0] for c in net.calls] == [1, 1, 1]
    net.calls.clear()
    infer(images(9, 64, 64), net, tile=None, batch_size=8)
    assert [c[0] for c in net.calls] == [8, 1]
    assert pass_size(8, 512 * 512, torch.device("cuda")) == 8
    assert pass_size(8, CPU_PASS_PIXELS * 2, torch.device("cpu")) == 1


def test_out_of_memory_at_the_smallest_size_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="ran out of memory even with batch size 1"):
        infer(images(1, 128, 128), _LimitedMemory(max_pixels=10), tile=128, overlap=16)


def test_other_runtime_errors_are_not_taken_for_out_of_memory() -> None:
    class Broken(_LimitedMemory):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        infer(images(1, 32, 32), Broken(0))


def test_bf16_on_cpu_runs_and_stays_close() -> None:
    net = tiny("rlfn", scale=2)
    x = images(1, 32, 40)
    full = infer(x, net, precision="fp32")
    half = infer(x, net, precision="bf16")
    assert half.dtype == np.float32
    assert np.abs(half - full).max() < 0.05 * max(np.abs(full).max(), 1.0)


# --- devices and precision ------------------------------------------------------------------


def test_cpu_and_auto_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_absent_devices_are_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)
    with pytest.raises(DeviceError, match="'cuda' was asked for but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="'mps' was asked for"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="expected auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"'cuda:3'.*has 1 CUDA device\(s\)"):
        resolve_device("cuda:3")


def test_precision_choice_respects_hardware_and_card(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    # auto on a CPU measures the network (tests/engine/test_devices.py); without one to time, fp32
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: True)
    assert choose_precision("auto", cpu, ("fp32", "bf16")) == "fp32"
    assert choose_precision("auto", cpu, ("fp32",)) == "fp32"  # not validated on the card
    assert choose_precision("bf16", cpu, ("fp32",)) == "fp32"
    assert choose_precision("bf16", cpu, ("fp32", "bf16")) == "bf16"
    with pytest.raises(DeviceError, match="'fp16' is not supported on cpu"):
        choose_precision("fp16", cpu, ("fp32", "fp16"))
    with pytest.raises(DeviceError, match="expected auto, fp32"):
        choose_precision("fp8", cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_runs_reduced_precision() -> None:
    net = tiny("rlfn", scale=2)
    x = images(3, 200, 300)
    on_cpu = infer(x, net, device="cpu")
    on_gpu = infer(x, net, device="cuda", tile=64, overlap=16)
    assert np.abs(on_gpu - on_cpu)[:, 40:-40, 40:-40].max() < 1e-2
    np.testing.assert_allclose(infer(x, net, device="cuda"), on_cpu, atol=1e-3)
    for precision in devices.supported_precisions(torch.device("cuda")):
        out = infer(x, net, device="cuda", precision=precision)
        assert np.abs(out - on_cpu).max() < 0.05 * np.abs(on_cpu).max()
    assert choose_precision("auto", resolve_device("cuda"), ("fp32",)) == "fp32"


# --- 2.5D: neighbours through enhance_series ------------------------------------------------


class _Recorder:
    """A 2.5D fake enhancer that records which slices it was given (by their sums)."""

    def __init__(self, card, context: int) -> None:  # type: ignore[no-untyped-def]
        self.card = card
        self.context = context
        self.needs_sample = True
        self.stacks: list[list[float]] = []
        self.samples: list[int] = []

    def for_series(self, sample: list[np.ndarray]) -> _Recorder:
        self.samples.append(len(sample))
        return self

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        self.stacks.append([float(s.sum()) for s in stack])
        return stack[self.context:len(stack) - self.context] if self.context else stack


@pytest.fixture
def seven_slices(tmp_path: Path) -> tuple[Path, list[float]]:
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted(MR_DIR.glob("*.dcm"))[10:17]:
        shutil.copy(path, folder)
    (series,) = scan(folder).series
    sums = [float(pydicom.dcmread(im.path).pixel_array.astype(np.float32).sum())
            for im in series.images]
    assert len(set(sums)) == 7
    return folder, sums


def _run_recorder(folder: Path, tmp_path: Path, context: int, batch_size: int,
                  order: list[int] | None = None) -> _Recorder:
    write_model(tmp_path / "zoo", "ctx", "dncnn", {**TINY_DNCNN, "in_channels": 3},
                task="denoise", scale=1)
    card = load_card("ctx", tmp_path / "zoo")
    recorder = _Recorder(card, context)
    (series,) = scan(folder).series
    written: list[Path] = []
    outcome = enhance_series(series, recorder, derivation_for(card, "t", " [t]"),
                             lambda ds: written.append(Path(ds.SOPInstanceUID)) or written[-1],
                             batch_size=batch_size)
    assert len(outcome.written) == len(written)
    return recorder


def test_2p5d_gets_neighbours_replicated_at_series_ends_and_across_chunks(
        seven_slices: tuple[Path, list[float]], tmp_path: Path) -> None:
    folder, s = seven_slices
    recorder = _run_recorder(folder, tmp_path, context=1, batch_size=3)
    assert recorder.stacks == [
        [s[0], s[0], s[1], s[2], s[3]],
        [s[2], s[3], s[4], s[5], s[6]],
        [s[5], s[6], s[6]],
    ]
    assert recorder.samples == [7]  # series statistics from a first pass over a sample


def test_2p5d_with_two_neighbours_and_batch_one(seven_slices: tuple[Path, list[float]],
                                                tmp_path: Path) -> None:
    folder, s = seven_slices
    recorder = _run_recorder(folder, tmp_path, context=2, batch_size=1)
    clamp = [s[min(max(i, 0), 6)] for i in range(-2, 9)]
    assert recorder.stacks == [clamp[i:i + 5] for i in range(7)]


def test_2p5d_neighbours_skip_a_refused_slice(seven_slices: tuple[Path, list[float]],
                                              tmp_path: Path) -> None:
    folder, s = seven_slices
    (series,) = scan(folder).series
    broken = series.images[3].path
    ds = pydicom.dcmread(broken)
    del ds.PixelData
    ds.save_as(broken)
    recorder = _run_recorder(folder, tmp_path, context=1, batch_size=4)
    assert recorder.stacks == [
        [s[0], s[0], s[1], s[2], s[4], s[5]],
        [s[4], s[5], s[6], s[6]],
    ]


def test_without_context_chunks_are_unchanged(seven_slices: tuple[Path, list[float]],
                                              tmp_path: Path) -> None:
    folder, s = seven_slices
    recorder = _run_recorder(folder, tmp_path, context=0, batch_size=3)
    assert recorder.stacks == [s[0:3], s[3:6], s[6:7]]
