"""The deterministic degradations against their definitions (SPEC section 7)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicomnode.engine.degradations import block_mean, crop_to_multiple, kspace_truncate, zero_filled
from dicomnode.pixels import modality_values
from tests.conftest import MR_DIR


@pytest.fixture(scope="module")
def mr_slice() -> np.ndarray:
    return modality_values(pydicom.dcmread(sorted(MR_DIR.glob("*.dcm"))[17])).astype(float)


@pytest.mark.parametrize("factor", [2, 3, 4, 8])
def test_kspace_truncation_keeps_intensity_scale(factor: int):
    image = np.full((48, 72), 100.0)
    low = kspace_truncate(image, factor)
    assert low.shape == (48 // factor, 72 // factor)
    np.testing.assert_allclose(low, 100.0, rtol=1e-12)
    np.testing.assert_allclose(zero_filled(low, factor), 100.0, rtol=1e-12)


@pytest.mark.parametrize("factor", [2, 4])
def test_zero_filled_is_exact_for_band_limited_images(factor: int):
    # Odd low sizes keep the spectrum Hermitian (no unpaired Nyquist term), so the
    # zero-filled image is real; smooth and positive, so magnitude changes nothing.
    y, x = np.mgrid[0:33, 0:33] / 33.0
    low = 100 + 20 * np.sin(2 * np.pi * x) * np.cos(4 * np.pi * y)
    full = zero_filled(low, factor)
    np.testing.assert_allclose(kspace_truncate(full, factor), low, rtol=1e-6, atol=1e-6)


def test_kspace_truncation_matches_the_definition(mr_slice: np.ndarray):
    f = 2
    image = crop_to_multiple(mr_slice, f)
    spectrum = np.fft.fftshift(np.fft.fft2(image))
    h, w = image.shape[0] // f, image.shape[1] // f
    top, left = image.shape[0] // 2 - h // 2, image.shape[1] // 2 - w // 2
    crop = spectrum[top:top + h, left:left + w]
    expected = np.abs(np.fft.ifft2(np.fft.ifftshift(crop))) / (f * f)
    np.testing.assert_allclose(kspace_truncate(image, f), expected)
    assert abs(kspace_truncate(image, f).mean() - image.mean()) < 0.01 * image.mean()


@pytest.mark.parametrize("factor", [2, 3, 8])
def test_block_mean(factor: int):
    image = np.arange(24 * 48, dtype=float).reshape(24, 48)
    low = block_mean(image, factor)
    assert low.shape == (24 // factor, 48 // factor)
    assert low[0, 0] == image[:factor, :factor].mean()
    assert low[-1, -1] == image[-factor:, -factor:].mean()


def test_factor_must_divide_the_image():
    with pytest.raises(ValueError, match="multiples of the factor 3"):
        block_mean(np.zeros((10, 9)), 3)
    with pytest.raises(ValueError, match="expected an integer >= 1"):
        kspace_truncate(np.zeros((8, 8)), 0)
    assert crop_to_multiple(np.zeros((10, 9)), 3).shape == (9, 9)
