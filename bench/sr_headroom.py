"""How much of zero-filling's error an x2 super-resolution model could remove at best.

Zero-filling's error is the reference's energy in the discarded k-space band (outside the
central half in each direction). Part of it is the noise the scanner recorded there: noise in
that band is independent of the kept band, so no method can predict it, and it bounds the PSNR
gain over zero-filling from above:

    ceiling = 10 log10(zero-filling's mean squared error / noise energy in the band per pixel)

The noise is measured where the series has a real floor: 48x48 corner patches in which every
pixel is below 5 % of the 99th percentile and few are exact zeros (a masked background is not
a floor). Their second moment gives the Rayleigh sigma (tissue
noise variance sigma^2), their variance the background's; the share of their (mean-removed)
energy in the discarded band is the noise spectrum's share there (0.75 for white noise, less
where the scanner filtered its k-space). A series without such patches (a masked background)
has no measurable floor and gets no ceiling. A ceiling far above a model's gain says the target
is not out of reach physically: what is missing is in the signal, not in the noise.

    PYTHONPATH=. python bench/sr_headroom.py [DICOM or NIfTI folders...] [--max-slices 30]
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicomnode.engine.degradations import crop_to_multiple, kspace_truncate, zero_filled
from dicomnode.engine.volume import sample_indices
from training.data import load_series

FACTOR = 2
PATCH = 48
FLOOR_FRACTION = 0.05
MASKED_SHARE = 0.2  # a Rayleigh floor has almost no exact zeros
DEFAULT_SERIES = [Path("../shared/data/mr_ge_signa_excite_t1_3d_cor_100sl"),
                  Path("../shared/data/mr_siemens_prisma_t1_fl2d_sag_35sl"),
                  Path("../shared/data/train/mr_siemens_prisma_t1_fl2d_sag_HFP_35sl")]


@dataclass(frozen=True)
class Headroom:
    """One series: zero-filling's error and, where a floor exists, the noise bound."""

    slices: int
    zero_filled_mse: float
    band_energy: float  # the reference's energy in the discarded band, per pixel
    floor_patches: int
    zero_share: float | None = None  # exact zeros in the floor patches: a partly masked floor
    sigma: float | None = None
    noise_band_share: float | None = None  # 0.75 for white noise
    noise_in_band: float | None = None  # per pixel
    ceiling_db: float | None = None


def discarded_band(rows: int, columns: int) -> np.ndarray:
    """Centred (fftshift-ed) mask of the k-space an x2 truncation drops."""
    ky = np.abs(np.arange(rows) - rows // 2) / (rows / 2)
    kx = np.abs(np.arange(columns) - columns // 2) / (columns / 2)
    return (ky[:, None] >= 1 / FACTOR) | (kx[None, :] >= 1 / FACTOR)


def floor_threshold(reference: np.ndarray) -> float:
    """Below this a pixel may be noise floor; above it is signal."""
    return FLOOR_FRACTION * float(np.percentile(reference, 99))


def floor_patches(reference: np.ndarray, threshold: float) -> np.ndarray:
    """The corner patches of every slice that hold only the noise floor: below ``threshold``
    and not masked (a masked background is mostly exact zeros, not a floor)."""
    h, w = reference.shape[-2:]
    corners = [image[y:y + PATCH, x:x + PATCH] for image in reference
               for y in (0, h - PATCH) for x in (0, w - PATCH)]
    found = [c for c in corners
             if c.max() < threshold and float((c == 0).mean()) < MASKED_SHARE]
    return np.array(found).reshape(-1, PATCH, PATCH)


def headroom(reference: np.ndarray) -> Headroom:
    """Zero-filling's error on ``reference`` (slices, rows, columns) and its noise bound."""
    reference = crop_to_multiple(np.asarray(reference, dtype=np.float64), FACTOR)
    error = float(((zero_filled(kspace_truncate(reference, FACTOR), FACTOR) - reference) ** 2)
                  .mean())
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(reference), axes=(-2, -1))) ** 2
    band = discarded_band(*reference.shape[-2:])
    band_energy = float(spectrum[:, band].sum() / reference.size / band.size)
    threshold = floor_threshold(reference)
    patches = floor_patches(reference, threshold)
    if len(patches) == 0:
        return Headroom(len(reference), error, band_energy, 0)
    sigma = math.sqrt(float((patches ** 2).mean()) / 2)  # Rayleigh: E[M^2] = 2 sigma^2
    centred = patches - patches.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fftshift(np.fft.fft2(centred), axes=(-2, -1))) ** 2
    share = float(power[:, discarded_band(PATCH, PATCH)].sum() / power.sum())
    variance = np.where(reference >= threshold, sigma ** 2, float(patches.var()))
    noise = float(variance.mean()) * share
    return Headroom(len(reference), error, band_energy, len(patches),
                    float((patches == 0).mean()), sigma, share, noise,
                    10 * math.log10(error / noise))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=DEFAULT_SERIES)
    parser.add_argument("--max-slices", type=int, default=30,
                        help="evenly spaced slices per series, as `evaluate --max-slices`")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print("| series | slices | zero-filled MSE | band energy | floor patches | zeros in them | "
          "sigma | noise share in band | noise in band | ceiling over zero-filled |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for series in load_series(args.folders, ("MR",)):
        picks = sample_indices(len(series.slices), args.max_slices)
        h = headroom(series.slices[picks])
        name = f"{series.folder.name} ({series.series_uid[-8:]})"
        if h.ceiling_db is None:
            print(f"| {name} | {h.slices} | {h.zero_filled_mse:.1f} | {h.band_energy:.1f} | 0 | "
                  f"- | - | - | - | no floor (masked background) |")
            continue
        print(f"| {name} | {h.slices} | {h.zero_filled_mse:.1f} | {h.band_energy:.1f} | "
              f"{h.floor_patches} | {100 * h.zero_share:.1f} % | {h.sigma:.2f} | "
              f"{h.noise_band_share:.3f} | {h.noise_in_band:.1f} | {h.ceiling_db:.2f} dB |")


if __name__ == "__main__":
    main()
