"""The noise degradations against their definitions (SPEC section 7)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import radon

from dicomnode.engine.degradations import (
    MU_WATER_PER_MM,
    ct_sinogram,
    filtered_back_projection,
    hu_to_attenuation,
    parallel_projection,
    rand_ct_low_dose,
    rand_poisson_gaussian,
    rand_rician,
    rand_rician_series,
    rician_sigma,
)


def _cylinder(size: int, radius_px: float, inside: float, outside: float) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size]
    centre = (size - 1) / 2
    image = np.full((size, size), outside, dtype=np.float64)
    image[(rows - centre) ** 2 + (cols - centre) ** 2 < radius_px**2] = inside
    return image


def test_rician_moments_on_a_constant_image():
    rng = np.random.default_rng(1)
    sigma = 10.0
    # Zero signal: Rayleigh, mean sigma sqrt(pi/2), variance (4 - pi)/2 sigma^2.
    zero = rand_rician(np.zeros((400, 400)), sigma, rng)
    assert zero.mean() == pytest.approx(sigma * np.sqrt(np.pi / 2), rel=0.01)
    assert zero.var() == pytest.approx((4 - np.pi) / 2 * sigma**2, rel=0.02)
    # Any signal: E[M^2] = A^2 + 2 sigma^2 exactly; high SNR: mean ~ sqrt(A^2 + sigma^2), var ~ s^2.
    bright = rand_rician(np.full((400, 400), 200.0), sigma, rng)
    assert (bright**2).mean() == pytest.approx(200.0**2 + 2 * sigma**2, rel=0.002)
    assert bright.mean() == pytest.approx(np.sqrt(200.0**2 + sigma**2), rel=0.002)
    assert bright.std() == pytest.approx(sigma, rel=0.02)


def test_rician_sigma_is_a_fraction_of_the_series_99th_percentile():
    series = np.arange(1000, dtype=float).reshape(10, 10, 10)
    assert rician_sigma(series, 0.05) == pytest.approx(0.05 * np.percentile(series, 99))
    with pytest.raises(ValueError, match="fraction"):
        rician_sigma(series, 1.5)


def test_random_degradations_reproduce_with_their_seed():
    image = np.linspace(0, 100, 64 * 64).reshape(64, 64)
    a = rand_rician_series(image, 0.05, np.random.default_rng(7))
    b = rand_rician_series(image, 0.05, np.random.default_rng(7))
    c = rand_rician_series(image, 0.05, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    p = rand_poisson_gaussian(image, 500, 0.01, np.random.default_rng(3))
    np.testing.assert_array_equal(p, rand_poisson_gaussian(image, 500, 0.01,
                                                           np.random.default_rng(3)))
    assert not np.array_equal(p, rand_poisson_gaussian(image, 500, 0.01,
                                                       np.random.default_rng(4)))


def test_poisson_gaussian_variance_follows_the_signal():
    rng = np.random.default_rng(0)
    photons, read = 400.0, 0.01
    for level in (0.2, 0.8):
        image = np.full((300, 300), level)
        noisy = rand_poisson_gaussian(image, photons, read, rng, value_range=(0.0, 1.0))
        assert noisy.mean() == pytest.approx(level, rel=0.01)
        assert noisy.var() == pytest.approx(level / photons + read**2, rel=0.05)
    # Inverted: the noise follows 1 - s, so the dark end (high value) is the quiet one.
    image = np.full((300, 300), 0.9)
    noisy = rand_poisson_gaussian(image, photons, 0.0, rng, value_range=(0.0, 1.0),
                                  signal_increases_with_value=False)
    assert noisy.var() == pytest.approx(0.1 / photons, rel=0.05)


def test_projection_matches_scikit_image_radon():
    image = _cylinder(64, 20, 1.0, 0.0)
    image[20:30, 35:45] = 2.0
    ours = parallel_projection(image, views=36)
    theirs = radon(image, theta=np.arange(36) * 5.0, circle=False)  # (bins, views)
    # Every view carries the image's total mass.
    np.testing.assert_allclose(ours.sum(axis=1), image.sum(), rtol=1e-5)
    # Same profiles once centred on the rotation axis (radon's detector is shorter). Edges
    # differ by up to a pixel (radon rotates about pixel n // 2, we about the image centre).
    centre, half = (ours.shape[1] - 1) // 2, theirs.shape[0] // 2
    ours_cut = ours[:, centre - half : centre - half + theirs.shape[0]]
    assert np.abs(ours_cut - theirs.T).mean() / theirs.max() < 0.02
    assert np.corrcoef(ours_cut.ravel(), theirs.T.ravel())[0, 1] > 0.995


def test_fbp_reconstructs_a_water_cylinder():
    spacing = 2.0
    image = _cylinder(128, 50, 0.0, -1000.0)
    sinogram = ct_sinogram(image, spacing)
    assert sinogram.shape[0] == 720
    mu = filtered_back_projection(sinogram, 128) / spacing
    hu = 1000 * mu / MU_WATER_PER_MM - 1000
    assert abs(hu[44:84, 44:84].mean()) < 15  # water within 15 HU
    assert abs(hu[2:8, 60:68].mean() + 1000) < 15  # air outside
    np.testing.assert_allclose(hu_to_attenuation(np.array([-1500.0, -1000.0, 0.0])),
                               [0.0, 0.0, MU_WATER_PER_MM])


def test_ct_noise_grows_as_one_over_root_dose_and_is_seeded():
    spacing = 2.0
    image = _cylinder(128, 50, 40.0, -1000.0)  # soft tissue, 20 cm
    sinogram = ct_sinogram(image, spacing)
    stds = {}
    for dose in (0.1, 0.4):
        noisy = rand_ct_low_dose(image, spacing, dose, np.random.default_rng(5), sinogram=sinogram)
        stds[dose] = (noisy - image)[44:84, 44:84].std()
    assert stds[0.1] / stds[0.4] == pytest.approx(2.0, rel=0.1)
    a = rand_ct_low_dose(image, spacing, 0.25, np.random.default_rng(11), sinogram=sinogram)
    b = rand_ct_low_dose(image, spacing, 0.25, np.random.default_rng(11), sinogram=sinogram)
    c = rand_ct_low_dose(image, spacing, 0.25, np.random.default_rng(12), sinogram=sinogram)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # The added noise has no mean: levels stay where they were.
    assert abs((a - image)[44:84, 44:84].mean()) < 2.0
    with pytest.raises(ValueError, match="dose fraction"):
        rand_ct_low_dose(image, spacing, 0.0, np.random.default_rng(0))


@pytest.mark.slow
def test_ct_noise_at_quarter_dose_is_about_25_hu_in_a_body_phantom():
    # 512 x 512, 0.7 mm pixels, 30 cm soft-tissue cylinder: a body-sized clinical slice.
    spacing = 0.7
    image = _cylinder(512, 150 / spacing, 40.0, -1000.0)
    noisy = rand_ct_low_dose(image, spacing, 0.25, np.random.default_rng(0))
    std = (noisy - image)[206:306, 206:306].std()
    assert 15.0 < std < 35.0, std
