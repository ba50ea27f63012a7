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
