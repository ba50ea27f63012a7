"""Where a k-space super-resolution model's error is: tissue, background, and the image edges.

PSNR over the whole image can rise while a model puts stripes in the background along the image
edges (a network trained on crops learns to answer each crop's FFT wrap-around). This prints,
for each validation MR series degraded as in the evaluation (central half of k-space), the RMS
error against the reference of zero-filling and of the model (with the node's guards) in:
tissue (reference above 5 % of its 99th percentile), background, and background within 24
pixels of each image edge.

    PYTHONPATH=. python bench/sr_regions.py [--model mr-sr-x2] [--models-dir DIR] [folders...]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from dicomnode.degradations import kspace_truncate, zero_filled
from training.data import load_series
from training.evaluate import load_model

DEFAULT_SERIES = [Path("../shared/data/mr_siemens_prisma_t1_fl2d_sag_35sl"),
                  Path("../shared/data/train/mr_siemens_prisma_t1_fl2d_sag_HFP_35sl")]
EDGE = 24


def regions(reference: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks over (slices, rows, columns)."""
    background = reference < 0.05 * np.percentile(reference, 99)
    masks = {"tissue": ~background, "background": background}
    sides = {"top": (slice(None), slice(0, EDGE)), "bottom": (slice(None), slice(-EDGE, None)),
             "left": (slice(None), slice(None), slice(0, EDGE)),
             "right": (slice(None), slice(None), slice(-EDGE, None))}
    for name, index in sides.items():
        band = np.zeros_like(background)
        band[index] = True
        masks[f"background, {name} {EDGE} px"] = background & band
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=DEFAULT_SERIES)
    parser.add_argument("--model", default="mr-sr-x2")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    model = load_model(args.model, args.models_dir)
    for series in load_series(args.folders):
        reference = series.slices.astype(np.float64)
        low = kspace_truncate(reference, model.scale)
        baseline = zero_filled(low, model.scale)
        with torch.inference_mode():
            output = model.predict(low)
        print(f"{series.series_uid[-14:]} ({len(reference)} slices)")
        for name, mask in regions(reference).items():
            zf = np.sqrt(np.mean((baseline - reference)[mask] ** 2))
            ours = np.sqrt(np.mean((output - reference)[mask] ** 2))
            print(f"  {name:28s} {mask.mean() * 100:5.1f} % of pixels   RMS zero-filled "
                  f"{zf:7.2f}   model {ours:7.2f}")


if __name__ == "__main__":
    main()
