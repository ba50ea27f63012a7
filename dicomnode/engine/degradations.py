"""Degradations and the classical inverses the baselines use (SPEC section 7).

One implementation shared by training, evaluation and the node's safety guards, so "what the
model was trained to undo" and "what the guard enforces" can never drift apart. The node
imports this module; it never imports ``training``.
"""

from __future__ import annotations

import numpy as np


def _centre(full: int, part: int) -> slice:
    """The central ``part`` indices of a centred (fftshift-ed) axis of length ``full``.

    Both lengths place the DC term at ``n // 2``, so cropping and padding are inverses.
    """
    start = full // 2 - part // 2
    return slice(start, start + part)


def _check_factor(image: np.ndarray, factor: int) -> tuple[int, int]:
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor is {factor!r}: expected an integer >= 1")
    height, width = image.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"image is {height} x {width}: both sides must be multiples of the factor {factor}"
        )
    return height // factor, width // factor


def kspace_truncate(image: np.ndarray, factor: int) -> np.ndarray:
    """MR acquired with a matrix ``factor`` times smaller: keep the central 1/f of k-space.

    FFT of the magnitude image, centred crop, inverse FFT, magnitude, divided by f*f so that
    intensities keep their scale. Works on the last two axes.
    """
    h, w = _check_factor(image, factor)
    if factor == 1:
        return np.asarray(image, dtype=np.float64).copy()
    height, width = image.shape[-2:]
    spectrum = np.fft.fftshift(np.fft.fft2(image, axes=(-2, -1)), axes=(-2, -1))
    crop = spectrum[..., _centre(height, h), _centre(width, w)]
    low = np.fft.ifft2(np.fft.ifftshift(crop, axes=(-2, -1)), axes=(-2, -1))
    return np.abs(low) / (factor * factor)


def zero_filled(low: np.ndarray, factor: int) -> np.ndarray:
    """Zero-filled k-space interpolation: the classical MR baseline and inverse of the above.

    Zero-pad the low-resolution k-space back to full size, inverse FFT, magnitude, times f*f.
    """
    h, w = low.shape[-2:]
    if factor == 1:
        return np.asarray(low, dtype=np.float64).copy()
    spectrum = np.fft.fftshift(np.fft.fft2(low, axes=(-2, -1)), axes=(-2, -1))
    padded = np.zeros((*low.shape[:-2], h * factor, w * factor), dtype=spectrum.dtype)
    padded[..., _centre(h * factor, h), _centre(w * factor, w)] = spectrum
    full = np.fft.ifft2(np.fft.ifftshift(padded, axes=(-2, -1)), axes=(-2, -1))
    return np.abs(full) * (factor * factor)


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """CT / radiograph detector binning: the mean of each f x f block (last two axes)."""
    h, w = _check_factor(image, factor)
    shape = (*image.shape[:-2], h, factor, w, factor)
    return np.asarray(image, dtype=np.float64).reshape(shape).mean(axis=(-3, -1))


def crop_to_multiple(image: np.ndarray, factor: int) -> np.ndarray:
    """The largest top-left crop whose sides are multiples of ``factor``."""
    height, width = image.shape[-2:]
    return image[..., : height - height % factor, : width - width % factor]


# --- Noise (SPEC section 7). Every random function is named ``rand_*`` and draws only from the
# ``numpy.random.Generator`` it is given, so a data set is reproducible from its seed.

MU_WATER_PER_MM = 0.0192
"""Linear attenuation of water (1/mm) at the effective energy of a clinical CT beam."""
CT_VIEWS = 720
"""Parallel-beam views over 180 degrees for the low-dose simulation."""
CT_I0 = 1e7
"""Photons per ray at full dose (before attenuation)."""


def rician_sigma(series: np.ndarray, fraction: float) -> float:
    """Noise sigma as a fraction of the series' 99th percentile (SPEC: 1-9 %, evaluated 3 and 7 %).

    The percentile is taken over the whole series so every slice gets the same sigma, as a
    scanner would give.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction is {fraction!r}: expected a number in [0, 1]")
    return float(fraction * np.percentile(np.asarray(series, dtype=np.float64), 99))


def rand_rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise: |image + n_re + i n_im|, n ~ N(0, sigma).

    This is what a magnitude MR image of a noisy complex signal is; on a magnitude image that is
    already noisy it adds noise on top, as the node will meet it.
    """
    if sigma < 0:
        raise ValueError(f"sigma is {sigma!r}: expected >= 0")
    image = np.asarray(image, dtype=np.float64)
    real = image + rng.normal(0.0, sigma, image.shape)
    imag = rng.normal(0.0, sigma, image.shape)
    return np.hypot(real, imag)


def rand_rician_series(
    series: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Rician noise on a whole series with sigma = ``fraction`` x its 99th percentile."""
    return rand_rician(series, rician_sigma(series, fraction), rng)


def hu_to_attenuation(hu: np.ndarray) -> np.ndarray:
    """Hounsfield units to linear attenuation (1/mm); below air (padding, -1500) counts as air."""
    mu = MU_WATER_PER_MM * (1.0 + np.asarray(hu, dtype=np.float64) / 1000.0)
    return np.maximum(mu, 0.0)


def _geometry(size: int, views: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Pixel centre coordinates (x right, y up, origin at the image centre), angles, bins."""
    centre = (size - 1) / 2.0
    rows, cols = np.mgrid[0:size, 0:size]
    x = (cols - centre).ravel()
    y = (centre - rows).ravel()
    angles = np.arange(views) * (np.pi / views)
    # Odd detector length covering the image diagonal, plus one bin for interpolation.
    half = int(np.ceil(size * np.sqrt(2.0) / 2.0)) + 2
    return x, y, angles, 2 * half + 1


def parallel_projection(image: np.ndarray, views: int = CT_VIEWS) -> np.ndarray:
    """Parallel-beam line integrals in pixel units, ``views`` angles over 180 degrees.

    Computed in float32 (line integrals of a slice stay below ~10, far from its precision).
    Pixel-driven: each pixel's value is shared linearly between the two detector bins (1 pixel
    wide) around its projected centre, the exact adjoint of the linear-interpolating
    back-projection in :func:`filtered_back_projection`. Vectorised with torch because
    scikit-image's ``radon`` takes about 10 s for a 512x512 slice at 720 views.
    Returns (views, bins); bin ``(bins - 1) / 2`` is the centre of rotation.
    """
    import torch

    image = np.asarray(image, dtype=np.float64)
    size = _square_size(image)
    x, y, angles, bins = _geometry(size, views)
    values = image.ravel()
    keep = values != 0
    xs = torch.from_numpy(x[keep]).float()
    ys = torch.from_numpy(y[keep]).float()
    vs = torch.from_numpy(values[keep]).float()
    sinogram = torch.zeros(views * bins, dtype=torch.float32)
    centre = (bins - 1) / 2.0
    chunk = max(1, 16_000_000 // max(1, int(keep.sum())))
    for start in range(0, views, chunk):
        theta = torch.from_numpy(angles[start : start + chunk]).float()
        t = torch.cos(theta)[:, None] * xs[None] + torch.sin(theta)[:, None] * ys[None] + centre
        low = t.floor()
        frac = t - low
        offset = (torch.arange(start, start + len(theta)) * bins)[:, None]
        index = (low.long() + offset).ravel()
        sinogram.index_add_(0, index, (vs * (1.0 - frac)).ravel())
        sinogram.index_add_(0, index + 1, (vs * frac).ravel())
    return sinogram.view(views, bins).numpy().astype(np.float64)


def ramp_filter(sinogram: np.ndarray) -> np.ndarray:
    """Filter each projection with the band-limited ramp (Ram-Lak) kernel, detector spacing 1.

    Spatial kernel of Kak & Slaney (eq. 3.61): h(0) = 1/4, h(n odd) = -1/(pi n)^2, h(n even) = 0,
    applied by zero-padded FFT convolution so that there is no DC shift or wrap-around.
    """
    bins = sinogram.shape[1]
    size = 1 << int(np.ceil(np.log2(2 * bins)))
    n = np.concatenate([np.arange(0, size // 2 + 1), np.arange(-(size // 2) + 1, 0)])
    kernel = np.zeros(size)
    kernel[0] = 0.25
    odd = n % 2 == 1
    kernel[odd] = -1.0 / (np.pi * n[odd]) ** 2
    response = np.real(np.fft.fft(kernel))
    padded = np.fft.fft(sinogram, n=size, axis=1)
    return np.real(np.fft.ifft(padded * response, axis=1))[:, :bins]


def filtered_back_projection(sinogram: np.ndarray, size: int) -> np.ndarray:
    """Reconstruct a ``size`` x ``size`` image from parallel-beam projections over 180 degrees.

    Ramp filter, then linear-interpolating back-projection scaled by pi / views, in the pixel
    units of :func:`parallel_projection`.
    """
    import torch

    views, bins = sinogram.shape
    x, y, angles, expected = _geometry(size, views)
    if bins != expected:
        raise ValueError(f"sinogram has {bins} bins, a {size}x{size} image needs {expected}")
    filtered = torch.from_numpy(ramp_filter(sinogram)).float()
    # Linear interpolation as value + frac * slope, slope precomputed per bin: the gathers on
    # one index tensor are the cost, and this form is twice as fast as gathering both neighbours.
    slope = torch.cat([filtered[:, 1:] - filtered[:, :-1], torch.zeros(views, 1)], dim=1)
    xs, ys = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    image = torch.zeros(size * size, dtype=torch.float32)
    centre = (bins - 1) / 2.0
    chunk = max(1, 8_000_000 // (size * size))
    for start in range(0, views, chunk):
        theta = torch.from_numpy(angles[start : start + chunk]).float()
        t = torch.cos(theta)[:, None] * xs[None] + torch.sin(theta)[:, None] * ys[None] + centre
        low = t.floor()
        index = low.long()
        rows = slice(start, start + len(theta))
        image += (torch.gather(filtered[rows], 1, index)
                  + (t - low) * torch.gather(slope[rows], 1, index)).sum(0)
    return (image.double() * (np.pi / views)).view(size, size).numpy()


def ct_sinogram(image_hu: np.ndarray, pixel_spacing_mm: float, views: int = CT_VIEWS) -> np.ndarray:
    """Noise-free line integrals (dimensionless, mu x path length) of a CT slice in HU.

    Cache it: the low-dose simulation of the same slice at many doses and seeds reuses it.
    """
    if not pixel_spacing_mm > 0:
        raise ValueError(f"pixel spacing is {pixel_spacing_mm!r} mm: expected > 0")
    return parallel_projection(hu_to_attenuation(image_hu), views) * pixel_spacing_mm


def rand_ct_low_dose(
    image_hu: np.ndarray,
    pixel_spacing_mm: float,
    dose_fraction: float,
    rng: np.random.Generator,
    *,
    i0: float = CT_I0,
    views: int = CT_VIEWS,
    sinogram: np.ndarray | None = None,
) -> np.ndarray:
    """Low-dose CT by noise insertion in the projection domain (SPEC section 7).

    HU -> attenuation (mu_water = 0.0192/mm, pixel spacing in mm), parallel-beam forward
    projection (``views`` over 180 degrees), Poisson counts with ``i0 x dose_fraction`` photons
    per unattenuated ray, filtered back-projection of the noisy and of the clean projections;
    the result is the original image plus (noisy - clean) reconstruction, in HU.

    FBP is linear, so FBP(noisy) - FBP(clean) is computed as FBP(noisy - clean): one
    back-projection instead of two, the same numbers up to rounding. A ray that receives no
    photon at all is counted as one photon (photon starvation; the log needs a count > 0).
    ``sinogram`` is :func:`ct_sinogram` of the image, when the caller cached it.
    """
    if not 0.0 < dose_fraction <= 1.0:
        raise ValueError(f"dose fraction is {dose_fraction!r}: expected a number in (0, 1]")
    image_hu = np.asarray(image_hu, dtype=np.float64)
    size = _square_size(image_hu)
    clean = ct_sinogram(image_hu, pixel_spacing_mm, views) if sinogram is None else sinogram
    photons = i0 * dose_fraction
    counts = rng.poisson(photons * np.exp(-clean)).astype(np.float64)
    noisy = -np.log(np.maximum(counts, 1.0) / photons)
    delta_mu = filtered_back_projection(noisy - clean, size) / pixel_spacing_mm
    return image_hu + 1000.0 * delta_mu / MU_WATER_PER_MM


def rand_poisson_gaussian(
    image: np.ndarray,
    photons: float,
    read_noise: float,
    rng: np.random.Generator,
    *,
    value_range: tuple[float, float] | None = None,
    signal_increases_with_value: bool = True,
) -> np.ndarray:
    """Radiograph noise: signal-dependent Poisson at a photon level plus Gaussian read noise.

    The image is mapped to a signal s in [0, 1] by ``value_range`` (default: the image's min and
    max); ``photons`` is the count at s = 1, so the observed signal is Poisson(photons x s) /
    photons + N(0, read_noise), mapped back to the image's units. Where high values mean little
    exposure (bone bright in MONOCHROME2 radiographs), pass ``signal_increases_with_value=False``
    and the noise follows 1 - s instead.
    """
    if photons <= 0 or read_noise < 0:
        raise ValueError(f"photons {photons!r} must be > 0 and read noise {read_noise!r} >= 0")
    image = np.asarray(image, dtype=np.float64)
    low, high = value_range if value_range is not None else (image.min(), image.max())
    span = float(high - low) or 1.0
    signal = np.clip((image - low) / span, 0.0, None)
    if not signal_increases_with_value:
        signal = np.clip(1.0 - signal, 0.0, None)
    observed = rng.poisson(photons * signal) / photons + rng.normal(0.0, read_noise, image.shape)
    if not signal_increases_with_value:
        observed = 1.0 - observed
    return low + observed * span


def _square_size(image: np.ndarray) -> int:
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(
            f"image shape is {image.shape}: the CT simulation needs one square slice "
            "(pad or crop it first)"
        )
    return image.shape[0]
