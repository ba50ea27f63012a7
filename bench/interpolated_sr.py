"""What a super-resolution model adds to series the scanner already interpolated.

A scanner that acquires half the matrix and zero-fills to the stored one leaves nothing finer
to recover: the zero-filled x2 image of such a series is the right answer. This prints, for
each validation MR series, as stored (native) and interpolated that way, the RMS of what the
model (with the node's guards) adds to the zero-filled x2 image, with the consistency guard's
fade (guards.detail_weight) and without it.

    PYTHONPATH=. python bench/interpolated_sr.py [--model mr-sr-x2] [DICOM folders...]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

import dicomnode.engine.guards as guards
from dicomnode.engine.degradations import kspace_truncate, zero_filled
from training.data import load_series
from training.evaluate import load_model

DEFAULT_SERIES = [Path("../shared/data/mr_siemens_prisma_t1_fl2d_sag_35sl"),
                  Path("../shared/data/train/mr_siemens_prisma_t1_fl2d_sag_HFP_35sl")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=DEFAULT_SERIES)
    parser.add_argument("--model", default="mr-sr-x2")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    model = load_model(args.model)
    for series in load_series(args.folders):
        native = series.slices.astype(np.float64)
        variants = {"native": native,
                    "interpolated": zero_filled(kspace_truncate(native, 2), 2)}
        for name, images in variants.items():
            answer = zero_filled(images, 2)
            span = float(images.max() - images.min())
            for fade in (False, True):
                saved = guards.INTERPOLATED_BAND
                if not fade:
                    guards.INTERPOLATED_BAND = (-2.0, -1.0)  # every slice keeps all detail
                try:
                    with torch.inference_mode():
                        output = model.predict(images)
                finally:
                    guards.INTERPOLATED_BAND = saved
                added = float(np.sqrt(((output - answer) ** 2).mean()))
                weights = [guards.detail_weight(x) for x in images]
                print(f"{series.series_uid[-12:]} {name:12s} fade={'on ' if fade else 'off'} "
                      f"added RMS {added:.3f} ({100 * added / span:.4f} % of range), "
                      f"slice weights min {min(weights):.2f} median {np.median(weights):.2f}")


if __name__ == "__main__":
    main()
