"""ONNX Runtime as a runtime for learned models: same outputs as torch, chosen by the measured
speed-up and tolerance rule, and torch whenever anything on the ONNX side fails."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from torch import nn

from dicomnode.cli import main
from dicomnode.engine import load as load_model
from dicomnode.engine import runtimes
from dicomnode.engine.cards import list_cards
from dicomnode.engine.runtimes import (
    MIN_SPEEDUP,
    TOLERANCE,
    OnnxNetwork,
    choose_runtime,
    export_onnx,
    faster_runtime,
    relative_difference,
)
from dicomnode.errors import DeviceError
from dicomnode.pixels import modality_values
from tests.conftest import CT_TILT_DIR, DATA, MR_DIR

CPU = torch.device("cpu")
SLICES = {"CT": CT_TILT_DIR, "MR": MR_DIR, "CR": DATA / "cr_tibia_fuji_wg04_RG3"}
LEARNED = [card.name for card in list_cards()[0] if card.learned]


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "_DECISIONS", {})


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, object]]:
    """The fields of every ``name`` line logged (dicomnode.logs.event)."""
    return [r.fields for r in caplog.records if r.getMessage() == name]  # type: ignore[attr-defined]


def real_slice(modality: str, size: int = 160) -> np.ndarray:
    """The centre ``size`` x ``size`` of a tests/data series' first slice (modality values)."""
    path = next(p for p in sorted(SLICES[modality].iterdir()) if p.suffix != ".md")
    values = modality_values(pydicom.dcmread(path)).astype(np.float32)
    values = values.reshape(-1, *values.shape[-2:])[0]
    top, left = (values.shape[0] - size) // 2, (values.shape[1] - size) // 2
    return np.ascontiguousarray(values[top:top + size, left:left + size])


# --- every shipped learned model --------------------------------------------------------------


def test_the_zoo_has_learned_models_to_check() -> None:
    assert {"ct-denoise", "mr-denoise", "xr-denoise", "mr-sr-x2"} <= set(LEARNED)


@pytest.mark.slow
@pytest.mark.parametrize("name", LEARNED)
def test_onnxruntime_equals_torch_within_the_tolerance_for_each_shipped_model(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # tile 128 on a 160x160 slice (plus the mirrored rim): several overlapping tiles
    reference = load_model(name, device="cpu", tile=128, runtime="torch")
    modality = reference.card.modalities[0]
    stack = real_slice(modality)[None]
    with caplog.at_level(logging.INFO, logger="dicomnode.engine"):
        onnx = load_model(name, device="cpu", tile=128, runtime="onnxruntime")
    expected = reference(stack)
    if name == "mr-sr-x2":  # RLFN's k-space base (torch.fft) does not export: torch runs it
        assert onnx.runtime == "torch" and onnx.runner is onnx.network
        [chosen] = events(caplog, "runtime_chosen")
        assert chosen["chosen"] == "torch" and "aten::fft_fft2" in str(chosen["reason"])
        np.testing.assert_array_equal(onnx(stack), expected)
        return
    assert onnx.runtime == "onnxruntime" and isinstance(onnx.runner, OnnxNetwork)
    got = onnx(stack)
    assert onnx.runner.failure is None  # every pass came from ONNX Runtime
    assert got.shape == expected.shape
    span = float(expected.max() - expected.min())
    assert span > 0
    assert np.max(np.abs(got - expected)) <= TOLERANCE * span
    assert not np.array_equal(got, expected)  # a different runtime did compute it


@pytest.mark.slow
def test_forced_onnxruntime_enhance_gives_torchs_pixels_within_one_stored_unit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    passes: list[tuple[int, ...]] = []
    forward = OnnxNetwork.forward

    def counted(self: OnnxNetwork, x: torch.Tensor) -> torch.Tensor:
        passes.append(tuple(x.shape))
        return forward(self, x)

    monkeypatch.setattr(OnnxNetwork, "forward", counted)
    outputs = {}
    for runtime in ("onnxruntime", "torch"):
        out = tmp_path / runtime
        assert main(["enhance", str(CT_TILT_DIR), str(out), "--model", "ct-denoise",
                     "--device", "cpu", "--runtime", runtime, "--no-progress"]) == 0
        capsys.readouterr()
        outputs[runtime] = {}
        for path in out.rglob("*.dcm"):
            ds = pydicom.dcmread(path)
            outputs[runtime][int(ds.InstanceNumber)] = ds.pixel_array.astype(np.int64)
    sources = len([p for p in CT_TILT_DIR.iterdir() if p.suffix == ".dcm"])
    assert len(outputs["torch"]) == sources
    assert outputs["onnxruntime"].keys() == outputs["torch"].keys()
    # the ONNX run's slices went through the session: the load's check, then one per slice
    assert len(passes) >= 1 + sources
    worst = max(int(np.abs(outputs["onnxruntime"][k] - outputs["torch"][k]).max())
                for k in outputs["torch"])
    assert worst <= 1


# --- fall back to torch --------------------------------------------------------------------------


class Spectral(nn.Module):
    """A network with an operator that ONNX opset 17 cannot express (as RLFN's k-space base)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.fft.ifft2(torch.fft.fft2(x)).real * 0.0


class SizeBranch(nn.Module):
    """A Python-side branch on the input size: the trace keeps only the branch it took."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 if x.shape[-1] > 100 else x


def test_a_network_that_does_not_export_runs_on_torch(
    caplog: pytest.LogCaptureFixture
) -> None:
    network = Spectral().eval()
    with caplog.at_level(logging.INFO, logger="dicomnode.engine.runtimes"):
        runtime, runner = choose_runtime("auto", network, CPU, "fp32", tile=64, name="spectral")
    assert (runtime, runner) == ("torch", network)
    [chosen] = events(caplog, "runtime_chosen")
    assert chosen["chosen"] == "torch"
    reason = str(chosen["reason"])
    assert reason.startswith("ONNX export or session failed: UnsupportedOperatorError")
    assert "fft" in reason
    assert "\n" not in reason  # one line, not the exporter's graph dump


def test_a_failing_exporter_falls_back_to_torch_even_when_forced(
    caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object) -> OnnxNetwork:
        raise RuntimeError("exporter exploded")

    network = nn.Conv2d(1, 1, 3, padding=1).eval()
    with caplog.at_level(logging.WARNING, logger="dicomnode.engine.runtimes"):
        runtime, runner = choose_runtime("onnxruntime", network, CPU, "fp32", tile=64,
                                         export=broken)
    assert (runtime, runner) == ("torch", network)
    [chosen] = events(caplog, "runtime_chosen")
    assert chosen["reason"] == "ONNX export or session failed: RuntimeError: exporter exploded"
    assert caplog.records[0].levelno == logging.WARNING  # asked for, not given


def test_a_shape_the_trace_got_wrong_is_caught_and_runs_on_torch(
    caplog: pytest.LogCaptureFixture
) -> None:
    network = SizeBranch().eval()
    onnx = export_onnx(network, torch.rand(1, 1, 64, 64), threads=1, name="branch")
    small = torch.rand(1, 1, 64, 64)
    np.testing.assert_array_equal(onnx(small).numpy(), small.numpy())
    assert onnx.failure is None
    large = torch.rand(1, 1, 128, 128)
    with caplog.at_level(logging.WARNING, logger="dicomnode.engine.runtimes"):
        got = onnx(large)
    np.testing.assert_array_equal(got.numpy(), (large * 2).numpy())  # torch's answer
    assert onnx.failure is not None and "input shape [1, 1, 128, 128]" in onnx.failure
    assert [e["reason"] for e in events(caplog, "runtime_fallback")] == [onnx.failure]
    again = onnx(small)  # torch from now on
    np.testing.assert_array_equal(again.numpy(), small.numpy())


class FailingSession:
    def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise RuntimeError("session lost its memory arena")


def test_a_session_error_during_a_job_falls_back_to_torch_once(
    caplog: pytest.LogCaptureFixture
) -> None:
    network = nn.Conv2d(1, 1, 3, padding=1).eval()
    onnx = OnnxNetwork(network, FailingSession(), "conv")
    x = torch.rand(2, 1, 32, 32)
    with caplog.at_level(logging.WARNING, logger="dicomnode.engine.runtimes"), \
            torch.inference_mode():
        first, second = onnx(x), onnx(x)
        expected = network(x)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    [fallback] = events(caplog, "runtime_fallback")
    assert fallback["reason"] == "session run failed: RuntimeError: session lost its memory arena"
    assert fallback["network"] == "conv"


# --- the choice ----------------------------------------------------------------------------------


def test_onnxruntime_needs_the_speed_up_and_the_tolerance() -> None:
    assert faster_runtime({"torch": 1.29, "onnxruntime": 0.75}, 1.7e-7) == "onnxruntime"
    assert faster_runtime({"torch": 1.50, "onnxruntime": 1.00}, 0.0) == "onnxruntime"  # exactly
    assert faster_runtime({"torch": 1.40, "onnxruntime": 1.00}, 0.0) == "torch"  # 1.4x: no
    assert faster_runtime({"torch": 3.00, "onnxruntime": 1.00}, 2e-3) == "torch"  # too different
    assert faster_runtime({"torch": 3.00, "onnxruntime": 1.00}, TOLERANCE) == "onnxruntime"
    assert faster_runtime({"torch": 3.00, "onnxruntime": 1.00}, float("nan")) == "torch"
    assert faster_runtime({"torch": 3.00}, 0.0) == "torch"
    assert MIN_SPEEDUP == 1.5 and TOLERANCE == 1e-3


def test_the_difference_is_relative_to_torchs_range() -> None:
    reference = np.array([0.0, 1.0, 2.0, 4.0])
    shifted = reference + np.array([0, 0, 0.004, 0])
    assert relative_difference(reference, shifted) == pytest.approx(1e-3)
    assert relative_difference(reference * 1000, reference * 1000 + 4) == pytest.approx(1e-3)
    assert relative_difference(np.zeros(3), np.full(3, 0.5)) == 0.5  # flat: absolute
    assert relative_difference(reference, reference[:3]) == float("inf")
    assert np.isnan(relative_difference(reference, reference * np.nan))


class Clock:
    """Time passes only while a network computes: ``costs[runtime]`` seconds per pass."""

    def __init__(self, torch_s: float, onnx_s: float) -> None:
        self.now, self.costs = 0.0, {"torch": torch_s, "onnxruntime": onnx_s}

    def __call__(self) -> float:
        return self.now


class Halve(nn.Module):
    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.clock.costs["torch"]
        return x * 0.5


class HalvingSession:
    """Stands in for an ONNX Runtime session of :class:`Halve` (``offset`` makes it wrong)."""

    def __init__(self, clock: Clock, offset: float = 0.0) -> None:
        self.clock, self.offset, self.calls = clock, offset, 0

    def run(self, outputs: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.clock.now += self.clock.costs["onnxruntime"]
        self.calls += 1
        return [feeds["x"] * 0.5 + self.offset]


def fake_export(session: HalvingSession):  # type: ignore[no-untyped-def]
    def export(network: nn.Module, example: torch.Tensor, threads: int,
               name: str = "") -> OnnxNetwork:
        return OnnxNetwork(network, session, name)
    return export


@pytest.mark.parametrize(("torch_s", "onnx_s", "expected"), [
    (1.29, 0.75, "onnxruntime"),  # 1.72x, as NAFNet measured at load on 2 cores
    (1.00, 0.80, "torch"),  # 1.25x: not enough
    (0.60, 0.90, "torch"),  # slower
])
def test_auto_times_both_on_a_tile_and_applies_the_rule(
    caplog: pytest.LogCaptureFixture, torch_s: float, onnx_s: float, expected: str
) -> None:
    clock = Clock(torch_s, onnx_s)
    network, session = Halve(clock).eval(), HalvingSession(clock)
    with caplog.at_level(logging.INFO, logger="dicomnode.engine.runtimes"):
        runtime, runner = choose_runtime("auto", network, CPU, "fp32", tile=64, name="halve",
                                         timer=clock, export=fake_export(session))
    assert runtime == expected
    assert (runner is network) == (expected == "torch")
    assert session.calls == 1 + runtimes.PROBE_REPEATS  # the check, then the timed rounds
    [line] = events(caplog, "runtime_chosen")
    assert line["torch_ms"] == pytest.approx(torch_s * 1000)
    assert line["onnxruntime_ms"] == pytest.approx(onnx_s * 1000)
    assert line["speedup"] == pytest.approx(round(torch_s / onnx_s, 2))
    assert (line["chosen"], line["difference"], line["network"]) == (expected, "0.0e+00", "halve")


def test_an_output_outside_the_tolerance_keeps_torch_however_fast(
    caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(3.0, 0.1)
    network = Halve(clock).eval()
    with caplog.at_level(logging.INFO, logger="dicomnode.engine.runtimes"):
        runtime, runner = choose_runtime("auto", network, CPU, "fp32", tile=64, name="halve",
                                         timer=clock,
                                         export=fake_export(HalvingSession(clock, 0.01)))
    assert (runtime, runner) == ("torch", network)
    [fallback] = events(caplog, "runtime_fallback")
    assert str(fallback["reason"]).startswith("output differs from torch's by 2.0e-02 of the range")


def test_the_decision_is_kept_per_key_and_forced_skips_the_timing() -> None:
    clock = Clock(1.0, 0.5)
    network = Halve(clock).eval()
    session = HalvingSession(clock)
    key = ("halve", "{}", 2)
    assert choose_runtime("auto", network, CPU, "fp32", 64, key=key, timer=clock,
                          export=fake_export(session))[0] == "onnxruntime"
    calls = session.calls
    # known: exported again (a session belongs to one network), checked, not timed
    assert choose_runtime("auto", network, CPU, "fp32", 64, key=key, timer=clock,
                          export=fake_export(session))[0] == "onnxruntime"
    assert session.calls == calls + 1
    slow = Clock(1.0, 0.9)
    other = HalvingSession(slow)
    assert choose_runtime("onnxruntime", Halve(slow).eval(), CPU, "fp32", 64, timer=slow,
                          export=fake_export(other))[0] == "onnxruntime"
    assert other.calls == 1  # the check only
    runtimes._DECISIONS[key] = "torch"

    def never(*args: object) -> OnnxNetwork:
        raise AssertionError("a network known to run faster on torch is not exported again")

    assert choose_runtime("auto", network, CPU, "fp32", 64, key=key, export=never)[0] == "torch"


def test_torch_and_gpu_devices_never_export() -> None:
    def never(*args: object) -> OnnxNetwork:
        raise AssertionError("exported")

    network = nn.Identity()
    assert choose_runtime("torch", network, CPU, "fp32", 64, export=never) == ("torch", network)
    for device in (torch.device("cuda", 0), torch.device("mps")):
        for requested in ("auto", "onnxruntime"):
            assert choose_runtime(requested, network, device, "bf16", 64,
                                  export=never) == ("torch", network)
    with pytest.raises(DeviceError, match="expected one of auto, torch, onnxruntime"):
        choose_runtime("openvino", network, CPU, "fp32", 64)


def test_the_worker_loads_learned_models_with_its_configured_runtime() -> None:
    from dicomnode.config import WorkerConfig
    from dicomnode.worker import load_worker_model

    for runtime in ("onnxruntime", "torch"):
        worker = WorkerConfig(device="cpu", tile_size=64, runtime=runtime)
        enhancer = load_worker_model("ct-denoise", worker)
        assert enhancer.runtime == runtime
        assert isinstance(enhancer.runner, OnnxNetwork) == (runtime == "onnxruntime")
