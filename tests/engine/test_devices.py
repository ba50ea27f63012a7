"""Precision choice: ``auto`` on a CPU measures the network; an explicit precision wins."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from dicomnode.engine import devices
from dicomnode.engine import load as load_model
from dicomnode.engine.cards import load_card
from dicomnode.engine.devices import (
    choose_precision,
    faster_precision,
    measured_cpu_precision,
    time_precisions,
)
from dicomnode.engine.learned import precision_key, precision_probe
from dicomnode.nets import build_network
from tests.model_factory import TINY_DNCNN, write_model

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_CPU_DECISIONS", {})


class FakeClock:
    """A timer whose time passes only while the probe runs: ``cost[precision]`` per call."""

    def __init__(self, cost: dict[str, float]) -> None:
        self.cost, self.now, self.calls = cost, 0.0, []

    def probe(self, precision: str) -> None:
        self.calls.append(precision)
        self.now += self.cost[precision]

    def __call__(self) -> float:
        return self.now


def test_the_faster_precision_needs_the_margin() -> None:
    assert faster_precision({"fp32": 0.30, "bf16": 0.13}) == "bf16"  # 2.3x: FFDNet-like
    assert faster_precision({"fp32": 0.30, "bf16": 0.26}) == "fp32"  # 1.15x: within the noise
    assert faster_precision({"fp32": 0.24, "bf16": 0.20}) == "bf16"  # exactly 1.2x
    assert faster_precision({"fp32": 0.60, "bf16": 0.90}) == "fp32"  # NAFNet-like: slower
    assert faster_precision({"fp32": 0.30}) == "fp32"


def test_timings_are_medians_after_warm_up_with_the_formats_taking_turns() -> None:
    clock = FakeClock({"fp32": 0.3, "bf16": 0.1})
    timings = time_precisions(clock.probe, ("fp32", "bf16"), warmup=2, repeats=3, timer=clock)
    assert timings == pytest.approx({"fp32": 0.3, "bf16": 0.1})
    assert clock.calls == ["fp32", "bf16"] * 5
    slow = FakeClock({"fp32": 3.0, "bf16": 1.0})  # on a busy machine: stop after the budget
    timings = time_precisions(slow.probe, ("fp32", "bf16"), warmup=2, repeats=3, timer=slow,
                              budget=10.0)
    assert slow.calls == ["fp32", "bf16"] * 3 and timings == {"fp32": 3.0, "bf16": 1.0}


@pytest.mark.parametrize(("bf16_cost", "expected"), [(0.13, "bf16"), (0.45, "fp32")])
def test_auto_on_a_cpu_picks_what_the_network_ran_faster(bf16_cost: float, expected: str,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    clock = FakeClock({"fp32": 0.3, "bf16": bf16_cost})
    with caplog.at_level(logging.INFO, logger="dicomnode.engine.devices"):
        chosen = choose_precision("auto", CPU, ("fp32", "bf16"), probe=clock.probe,
                                  probe_key=("ffdnet", "{}", 2), timer=clock)
    assert chosen == expected
    [record] = [r for r in caplog.records if r.getMessage() == "precision_measured"]
    assert record.fields["fp32_ms"] == pytest.approx(300.0)
    assert record.fields["bf16_ms"] == pytest.approx(bf16_cost * 1000)
    assert (record.fields["chosen"], record.fields["network"]) == (expected, "ffdnet")


def test_the_decision_is_measured_once_per_network_and_thread_count() -> None:
    clock = FakeClock({"fp32": 0.3, "bf16": 0.1})
    assert measured_cpu_precision(clock.probe, ("a", "{}", 2), timer=clock) == "bf16"
    measured = len(clock.calls)
    clock.cost = {"fp32": 0.1, "bf16": 0.3}  # would now choose fp32: the cached answer stays
    assert measured_cpu_precision(clock.probe, ("a", "{}", 2), timer=clock) == "bf16"
    assert len(clock.calls) == measured
    assert measured_cpu_precision(clock.probe, ("a", "{}", 1), timer=clock) == "fp32"


def test_auto_without_bf16_on_the_card_or_without_a_probe_is_fp32(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock({"fp32": 0.3, "bf16": 0.1})
    assert choose_precision("auto", CPU, ("fp32",), probe=clock.probe, timer=clock) == "fp32"
    assert clock.calls == []  # nothing to decide: no measurement
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: True)  # flags alone never decide
    assert choose_precision("auto", CPU, ("fp32", "bf16")) == "fp32"


def test_an_explicit_precision_wins_over_the_measurement() -> None:
    fast = FakeClock({"fp32": 0.3, "bf16": 0.1})
    assert choose_precision("fp32", CPU, ("fp32", "bf16"), probe=fast.probe,
                            timer=fast) == "fp32"
    slow = FakeClock({"fp32": 0.1, "bf16": 0.3})
    assert choose_precision("bf16", CPU, ("fp32", "bf16"), probe=slow.probe,
                            timer=slow) == "bf16"
    assert fast.calls == slow.calls == []


def test_the_probe_runs_the_network_as_the_node_does() -> None:
    network = build_network("dncnn", TINY_DNCNN).eval()
    probe = precision_probe(network, CPU)
    fp32, bf16 = probe("fp32"), probe("bf16")
    assert fp32.shape == bf16.shape == (1, 1, 256, 256)
    assert 0 < abs(fp32 - bf16).max() < 0.05  # bf16 really ran, and stayed close


def test_loading_a_model_decides_by_measurement(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write_model(tmp_path, "both", "dncnn", TINY_DNCNN, task="denoise", scale=1,
                inference={"precisions": ["fp32", "bf16"]})
    measured: list[object] = []

    def fake_times(probe, precisions, **_: object) -> dict[str, float]:
        measured.append(precisions)
        return {"fp32": 0.3, "bf16": 0.1}

    monkeypatch.setattr(devices, "time_precisions", fake_times)
    assert load_model("both", tmp_path, device="cpu").precision == "bf16"
    assert load_model("both", tmp_path, device="cpu").precision == "bf16"
    assert len(measured) == 1  # cached for the process
    assert load_model("both", tmp_path, device="cpu", precision="fp32").precision == "fp32"
    assert len(measured) == 1
    key = precision_key(load_card("both", tmp_path))
    assert key[0] == "dncnn" and key[2] == torch.get_num_threads()
