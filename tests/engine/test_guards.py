"""Safety guards: degrade(output) == input for super-resolution, kept low-pass for denoising."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.engine import load as load_model
from dicomnode.engine.cards import load_card, verify_weights
from dicomnode.engine.degradations import block_mean, kspace_truncate, zero_filled
from dicomnode.engine.guards import (
    active_guards,
    apply_guards,
    block_mean_consistency,
    detail_weight,
    kspace_consistency,
    low_pass,
    preserve_intensity,
    requirement_problems,
    setting_problems,
)
from dicomnode.enhance import derivation_for
from dicomnode.errors import ModelError
from tests.conftest import MR_DIR
from tests.model_factory import TINY_DNCNN, TINY_RLFN, write_model

RNG = np.random.default_rng(11)


def _phantom(count: int, height: int, width: int, floor: float = 0.0) -> np.ndarray:
    """Smooth anatomy-like slices (ellipse with structure) on a background at ``floor``."""
    yy, xx = np.mgrid[:height, :width] / np.array([height, width])[:, None, None]
    inside = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.35) ** 2 < 1
    slices = []
    for k in range(count):
        tissue = 600 + 300 * np.sin(6 * xx + k) * np.cos(4 * yy) + 200 * (xx > 0.6)
        slices.append(np.where(inside, tissue, floor))
    return np.stack(slices)


# --- super-resolution consistency -------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
@pytest.mark.parametrize("size", [(48, 40), (45, 39)])
def test_kspace_consistency_reproduces_the_input(factor: int, size: tuple[int, int]) -> None:
    source = _phantom(2, *size) + RNG.random((2, *size)) * 50
    output = RNG.random((2, size[0] * factor, size[1] * factor)) * 1000  # a wild network
    guarded = kspace_consistency(output, source, factor)
    assert guarded.dtype == np.float64 and guarded.shape == output.shape
    np.testing.assert_allclose(kspace_truncate(guarded, factor), source, atol=1e-8)
    # within rounding once stored as integers
    stored = np.rint(guarded)
    assert np.abs(kspace_truncate(stored, factor) - source).max() <= 1.0


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_block_mean_consistency_reproduces_the_input(factor: int) -> None:
    source = _phantom(2, 40, 24) - 1000  # CT-like, negative values too
    output = RNG.normal(0, 500, (2, 40 * factor, 24 * factor))
    guarded = block_mean_consistency(output, source, factor)
    np.testing.assert_allclose(block_mean(guarded, factor), source, atol=1e-9)
    assert np.abs(block_mean(np.rint(guarded), factor) - source).max() <= 0.5


def test_consistency_keeps_detail_the_input_does_not_contradict() -> None:
    high = _phantom(1, 64, 64)
    np.testing.assert_allclose(block_mean_consistency(high, block_mean(high, 2), 2), high,
                               atol=1e-9)
    yy, xx = np.mgrid[:64, :64] * (2 * np.pi / 64)
    smooth = (500 + 100 * np.sin(3 * xx) * np.cos(5 * yy))[None]  # within the kept k-space
    np.testing.assert_allclose(kspace_consistency(smooth, kspace_truncate(smooth, 2), 2), smooth,
                               atol=1e-6)


def test_an_already_interpolated_series_gets_no_made_up_detail() -> None:
    """A slice the scanner zero-filled from half its matrix has nothing left to super-resolve:
    the guard takes out every bit of a network's detail there, and keeps it on native slices."""
    native = np.stack([pydicom.dcmread(p).pixel_array.astype(np.float64)
                       for p in sorted(MR_DIR.glob("*.dcm"))[14:17]])
    interpolated = zero_filled(kspace_truncate(native, 2), 2)
    assert [detail_weight(x) for x in native] == [1.0, 1.0, 1.0]
    assert [detail_weight(x) for x in interpolated] == [0.0, 0.0, 0.0]
    assert detail_weight(np.full((16, 16), 7.0)) == 0.0
    wild = RNG.normal(0, 200, (3, 512, 512))  # a network that invents texture everywhere
    nothing = np.zeros_like(wild)
    np.testing.assert_allclose(kspace_consistency(wild, interpolated, 2),
                               kspace_consistency(nothing, interpolated, 2), atol=1e-6)
    kept = kspace_consistency(wild, native, 2) - kspace_consistency(nothing, native, 2)
    assert kept.std() > 100  # the outer k-space of a native slice is the network's
    np.testing.assert_allclose(kspace_truncate(kspace_consistency(wild, interpolated, 2), 2),
                               interpolated, atol=1e-6)


def test_consistency_refuses_sizes_that_do_not_match_the_scale() -> None:
    with pytest.raises(ValueError, match="expected"):
        block_mean_consistency(np.zeros((1, 10, 10)), np.zeros((1, 4, 4)), 2)


# --- denoising intensity preservation -------------------------------------------------------


def test_intensity_guard_keeps_the_low_pass_within_half_a_percent() -> None:
    yy, xx = np.mgrid[:96, :80] / 96.0
    inside = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.42) / 0.35) ** 2 < 1
    clean = np.stack([np.where(inside, 600 + 200 * np.sin(4 * xx + k) * np.cos(3 * yy), 40.0)
                      for k in range(4)])  # MR-like, with a non-zero background floor
    noisy = clean + RNG.normal(0, 30, clean.shape)
    series_range = float(np.ptp(noisy))
    # A denoiser that removes the noise but also changes gain, shifts levels and zeroes the
    # background floor: everything the guard must undo.
    bad = np.where(inside, 1.04 * clean + 0.03 * series_range, 0.0)
    assert np.abs(low_pass(bad) - low_pass(noisy)).max() > 0.03 * series_range
    guarded = preserve_intensity(bad, noisy)
    assert np.abs(low_pass(guarded) - low_pass(noisy)).max() <= 0.005 * series_range
    # The floor stays: the bound is on the low-pass, so it holds for the background's level
    # away from the edge (within a few sigma of it the low-pass mixes inside and outside).
    far_outside = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.42) / 0.35) ** 2 > 1.8
    assert far_outside.sum() > 400
    assert abs(guarded[:, far_outside].mean() - 40.0) < 0.005 * series_range
    # noise-scale detail is still the denoiser's: far less noise than the input inside
    interior = np.zeros(inside.shape, dtype=bool)
    interior[30:66, 20:50] = True
    assert np.std((guarded - clean)[:, interior]) < 0.5 * np.std((noisy - clean)[:, interior])


def test_intensity_guard_leaves_a_level_preserving_output_alone() -> None:
    source = _phantom(1, 64, 64)
    np.testing.assert_allclose(preserve_intensity(source.copy(), source), source, atol=1e-9)


def test_intensity_guard_keeps_a_denoisers_low_frequency_noise_removal() -> None:
    """Within the bound the output's low-pass is the network's: copying the input's back would
    put back the low-frequency part of its noise (large in CT)."""
    from scipy.ndimage import gaussian_filter

    clean = np.full((1, 96, 96), 40.0)
    clean[0, 20:76, 20:76] = 2000.0
    blotchy = gaussian_filter(np.random.default_rng(5).normal(0, 1, clean.shape), (0, 1, 1))
    noisy = clean + 6.0 * blotchy / blotchy.std()  # correlated noise, as CT's
    guarded = preserve_intensity(clean.copy(), noisy)  # a perfect denoiser
    series_range = float(np.ptp(noisy))
    assert np.abs(low_pass(clean) - low_pass(noisy)).max() < 0.004 * series_range
    np.testing.assert_array_equal(guarded, clean)  # nothing beyond the bound: left alone
    shifted = preserve_intensity(clean + 0.02 * series_range, noisy)  # a 2 % level shift
    assert np.abs(low_pass(shifted) - low_pass(noisy)).max() <= 0.005 * series_range


# --- which guards run, and the card ---------------------------------------------------------


def test_guards_are_on_by_default_for_learned_models_only() -> None:
    assert active_guards("super-resolution", {}, learned=True) == ("consistency",)
    assert active_guards("denoise", {}, learned=True) == ("intensity",)
    assert active_guards("denoise", {"intensity": False}, learned=True) == ()
    assert active_guards("super-resolution", {}, learned=False) == ()
    assert active_guards("super-resolution", {"consistency": True}, learned=False) == (
        "consistency",)


def test_guard_problems_name_the_key() -> None:
    assert setting_problems("denoise", {"consistancy": True}) == [
        "guards.consistancy: unknown guard; known: consistency, intensity"]
    assert "applies to denoise models" in setting_problems(
        "super-resolution", {"intensity": True})[0]
    assert setting_problems("super-resolution", {"intensity": False}) == []
    problem = requirement_problems(("consistency",), {"note": "?"})[0]
    assert problem.startswith("degradation.name: the consistency guard needs one of kspace")
    assert requirement_problems((), {}) == []


def test_apply_guards_dispatches_on_the_card_degradation() -> None:
    source = _phantom(1, 16, 16) - 500
    output = RNG.normal(0, 100, (1, 32, 32))
    np.testing.assert_allclose(block_mean(apply_guards(("consistency",), output, source, 2,
                                                       "block_mean"), 2), source, atol=1e-9)
    np.testing.assert_array_equal(apply_guards((), output, source, 2), output)
    with pytest.raises(ValueError, match="unknown degradation"):
        apply_guards(("consistency",), output, source, 2, "bicubic")


def test_card_without_guards_table_records_the_default_guard(tmp_path: Path) -> None:
    write_model(tmp_path, "sr", "rlfn", {**TINY_RLFN, "scale": 2})
    write_model(tmp_path, "dn", "dncnn", TINY_DNCNN, task="denoise", scale=1,
                guards={"intensity": False})
    sr, dn = load_card("sr", tmp_path), load_card("dn", tmp_path)
    assert sr.active_guards == ("consistency",) and dn.active_guards == ()
    assert "AI-processed; guards: consistency, compare" in derivation_for(sr, "r", "").description
    assert "guards" not in derivation_for(dn, "r", "").description


def test_card_with_consistency_but_no_degradation_is_refused(tmp_path: Path) -> None:
    write_model(tmp_path, "sr", "rlfn", {**TINY_RLFN, "scale": 2},
                degradation={"note": "unknown"})
    assert load_card("sr", tmp_path).active_guards == ("consistency",)  # listed, not runnable
    with pytest.raises(ModelError, match=r"cannot run model 'sr': degradation.name: the "
                                         "consistency guard needs"):
        load_model("sr", tmp_path, device="cpu")
    with pytest.raises(ModelError, match="consistency guard needs"):
        verify_weights(load_card("sr", tmp_path))  # what check-config calls


def test_a_classical_card_can_turn_a_guard_on(tmp_path: Path) -> None:
    folder = tmp_path / "bicubic-bp"
    folder.mkdir()
    (folder / "model.toml").write_text(
        'name = "bicubic-bp"\nversion = "1"\ntask = "super-resolution"\nscale = 2\n'
        'modalities = ["CT"]\n[architecture]\nname = "bicubic"\n[degradation]\n'
        'name = "block_mean"\n[guards]\nconsistency = true\n', encoding="utf-8")
    enhancer = load_model("bicubic-bp", tmp_path)
    stack = _phantom(1, 20, 16) - 1000
    np.testing.assert_allclose(block_mean(enhancer(stack), 2), stack, atol=1e-3)


# --- outputs with outliers: the bounds come from the input, whatever the output holds ------


def _noisy_mr_like(count: int = 2) -> np.ndarray:
    clean = _phantom(count, 96, 80, floor=40.0)
    return clean + np.random.default_rng(3).normal(0, 20, clean.shape)


def test_intensity_guard_bound_is_the_inputs_range_when_the_output_has_a_hot_pixel() -> None:
    """One hot pixel in a denoiser's output multiplies the output's range by ~30; the 0.5 %
    bound is of the input's range, so a 3 % level shift elsewhere is still taken out, and the
    hot pixel's own low-pass is brought within it too."""
    noisy = _noisy_mr_like()
    series_range = float(np.ptp(noisy))
    bad = _phantom(2, 96, 80, floor=40.0) + 0.03 * series_range
    bad[0, 48, 40] = 30 * series_range  # one hot pixel
    assert np.ptp(bad) > 25 * series_range
    guarded = preserve_intensity(bad, noisy)
    assert np.abs(low_pass(guarded) - low_pass(noisy)).max() <= 0.005 * series_range
    far = np.ones(noisy.shape[1:], dtype=bool)
    far[28:68, 20:60] = False  # away from the hot pixel: the shift itself is gone
    assert abs(float((guarded - bad)[1].mean()) + 0.03 * series_range) < 0.005 * series_range
    assert abs(float((guarded - bad)[0][far].mean()) + 0.03 * series_range) < (
        0.005 * series_range)


def test_intensity_guard_takes_a_hot_pixel_s_low_pass_out() -> None:
    """A perfect denoiser plus one hot pixel: the excess of the pixel's low-pass beyond the
    bound is removed around it, and nothing changes far from it."""
    noisy = _noisy_mr_like(1)
    series_range = float(np.ptp(noisy))
    output = noisy.copy()
    output[0, 30, 30] += 20 * series_range
    guarded = preserve_intensity(output, noisy)
    assert np.abs(low_pass(guarded) - low_pass(noisy)).max() <= 0.005 * series_range
    np.testing.assert_allclose(guarded[0, 70:, 60:], output[0, 70:, 60:], atol=1e-6)


@pytest.mark.parametrize("degradation", ["kspace", "block_mean"])
def test_consistency_holds_for_an_output_with_a_hot_pixel(degradation: str) -> None:
    source = _phantom(2, 40, 36, floor=40.0)
    output = np.repeat(np.repeat(source, 2, axis=-2), 2, axis=-1)
    output[1, 17, 23] = 1e6  # far outside the source's range
    guarded = apply_guards(("consistency",), output, source, 2, degradation)
    degrade = kspace_truncate if degradation == "kspace" else block_mean
    np.testing.assert_allclose(degrade(guarded, 2), source, atol=1e-6)
