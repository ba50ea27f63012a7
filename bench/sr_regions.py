"""Where a k-space super-resolution model's error is, series by series.

PSNR over the whole image can rise while a model puts stripes in the background along the image
edges (a network trained on crops learns to answer each crop's FFT wrap-around). ``dicomnode-train
evaluate`` checks the pooled regions (``training.regions``); this prints them per validation MR
series, degraded as in the evaluation (central half of k-space): RMS error against the reference
of zero-filling and of the model (with the node's guards) over the whole image, tissue,
background, and background within 24 pixels of each image edge.

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
from training.regions import pooled_rms, region_masks, squared_errors

DEFAULT_SERIES = [Path("../shared/data/mr_siemens_prisma_t1_fl2d_sag_35sl"),
                  Path("../shared/data/train/mr_siemens_prisma_t1_fl2d_sag_HFP_35sl")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=DEFAULT_SERIES)
    parser.add_argument("--model", default="mr-sr-x2", help="zoo name or run folder")
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    model = load_model(args.model, args.models_dir)
    for series in load_series(args.folders):
        reference = series.slices.astype(np.float64)
        low = kspace_truncate(reference, model.scale)
        with torch.inference_mode():
            output = model.predict(low)
        outputs = {"zero_filled": zero_filled(low, model.scale), "model": output}
        rms = pooled_rms([squared_errors(reference, outputs, series.padding)])
        print(f"{series.series_uid[-14:]} ({len(reference)} slices)")
        for name, mask in region_masks(reference, padding=series.padding).items():
            print(f"  {name:18s} {mask.mean() * 100:5.1f} % of pixels   RMS zero-filled "
                  f"{rms[name]['zero_filled']:7.2f}   model {rms[name]['model']:7.2f}")


if __name__ == "__main__":
    main()
