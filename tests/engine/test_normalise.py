"""Normalisation per card: HU windows, per-series percentiles, and the way back."""

from __future__ import annotations

import numpy as np
import pytest

from dicomnode.engine.normalise import (
    MAX_STATISTIC_VALUES,
    NormalisationSpec,
    parse_normalisation,
    robust_range,
)


def test_hu_window_maps_to_unit_range_and_back() -> None:
    spec, problems = parse_normalisation({"method": "hu", "low": -1024, "high": 3071})
    assert not problems and not spec.needs_series
    normaliser = spec.for_series([])
    values = np.array([-1024.0, 0.0, 3071.0, -3024.0])
    scaled = normaliser.forward(values)
    np.testing.assert_allclose(scaled[:3], [0.0, 1024 / 4095, 1.0], atol=1e-6)
    assert scaled[3] < 0  # not clipped unless the card says so
    np.testing.assert_allclose(normaliser.inverse(scaled), values, atol=1e-3)
    clipped = parse_normalisation({"method": "hu", "low": -1024, "high": 3071, "clip": True})[0]
    assert clipped.for_series([]).forward(values)[3] == 0.0


def test_percentiles_are_over_the_whole_series_sample() -> None:
    spec = parse_normalisation({"method": "percentile", "low": 0.5, "high": 99.5})[0]
    assert spec.needs_series
    dark, bright = np.zeros((16, 16)), np.full((16, 16), 1000.0)
    normaliser = spec.for_series([dark, bright])
    assert (normaliser.low, normaliser.high) == (0.0, 1000.0)  # not per slice
    np.testing.assert_allclose(normaliser.forward(bright), 1.0)


def test_robust_range_ignores_outliers_and_survives_constant_series() -> None:
    values = np.random.default_rng(0).normal(100, 10, 100_000)
    values[:10] = 1e6
    low, high = robust_range([values], 0.5, 99.5)
    assert 60 < low < 80 and 120 < high < 140
    assert robust_range([np.full(10, 7.0)], 0.5, 99.5) == (7.0, 8.0)
    assert robust_range([], 0.5, 99.5) == (0.0, 1.0)
    big = np.arange(MAX_STATISTIC_VALUES * 2, dtype=np.float32)
    low, high = robust_range([big], 0.0, 100.0)
    assert low == 0.0 and high > 0.99 * big[-1]


@pytest.mark.parametrize(("table", "problem"), [
    ({"method": "zscore"}, "normalisation.method: expected one of none, hu, percentile"),
    ({"method": "hu", "low": -1024}, "normalisation.high: required for method 'hu'"),
    ({"method": "hu", "low": 100, "high": 0}, "low (100) must be below high (0)"),
    ({"method": "percentile", "low": -1, "high": 99}, "percentiles must lie in 0..100"),
    ({"method": "hu", "low": 0, "high": 1, "clip": "yes"}, "normalisation.clip: expected"),
])
def test_bad_tables_name_the_key(table: dict, problem: str) -> None:
    problems = parse_normalisation(table)[1]
    assert any(problem in p for p in problems), problems


def test_none_is_the_identity() -> None:
    normaliser = NormalisationSpec().for_series([])
    values = np.array([-5.0, 3.5])
    np.testing.assert_array_equal(normaliser.inverse(normaliser.forward(values)), values)
