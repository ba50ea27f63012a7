"""Where a super-resolution model's error is, series by series.

PSNR over the whole image can rise while a model puts stripes in the background along the image
edges (a network trained on crops learns to answer each crop's FFT wrap-around).
``dicomnode-train evaluate`` checks the regions pooled over series (``training.regions``); this
runs the same evaluation and prints them per validation MR series: RMS error against the
reference of the best baseline and of the model (with the node's guards) over the whole image,
tissue, background, and background within 24 pixels of each image edge.

    PYTHONPATH=. python bench/sr_regions.py [--model mr-sr-x2] [--models-dir DIR] [folders...]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from training.data import load_series
from training.evaluate import evaluate, load_model

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
    result = evaluate(load_model(args.model, args.models_dir), load_series(args.folders))
    for level, block in result["levels"].items():
        best = block["best_baseline"]
        for row in block["per_series"]:
            print(f"{row['series'][-14:]} ({row['slices']} slices), level {level}")
            for region, by_name in row["region_rms"].items():
                if by_name["model"] is not None:
                    print(f"  {region:18s} RMS {best} {by_name[best]:7.2f}   "
                          f"model {by_name['model']:7.2f}")


if __name__ == "__main__":
    main()
