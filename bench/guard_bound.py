"""How much PSNR a denoiser can gain over the best baseline once the node's guards have run.

The node applies SPEC's intensity guard to every denoiser's output: the output's low-pass must
stay within 0.5 % of the series' range of the input's low-pass. Where the degraded input's
low-pass differs from the reference's (Rician noise raises the floor of a background the scanner
masked to 0), even a perfect network cannot close that gap. This script feeds the reference
itself, as if it were the network's output, through the same guards (and the padding fill and
restore the evaluation uses), and prints its PSNR / SSIM next to the best baseline's: the
largest gain any model can show on this data under the guard.

    PYTHONPATH=. python bench/guard_bound.py [--model mr-denoise] [DICOM folders...]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from training.data import SeriesData, load_series
from training.evaluate import (
    LoadedModel,
    evaluation_slices,
    guarded,
    load_model,
    node_inputs,
    restore_padding,
)
from training.metrics import average, series_metrics

DEFAULT_SERIES = [Path("../shared/data/mr_siemens_prisma_t1_fl2d_sag_35sl"),
                  Path("../shared/data/train/mr_siemens_prisma_t1_fl2d_sag_HFP_35sl")]


def bound_and_baselines(model: LoadedModel, s: SeriesData, level: float
                        ) -> dict[str, dict[str, float]]:
    """Metrics of the guarded perfect output and of every baseline on the evaluation's slices."""
    task = model.task
    _inputs, reference, shown, mask = evaluation_slices(task, s, level)
    # the network is shown (and gives back) the slice with its padding filled, not the step
    perfect, _mask = node_inputs(reference.astype(np.float32), reference, s.padding, s.modality,
                                 task.scale)
    outputs = {"perfect, guarded": guarded(model.guards, perfect, shown, task)}
    outputs.update(task.baselines(shown))
    return series_metrics(reference, {name: restore_padding(out, reference, mask)
                                      for name, out in outputs.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=DEFAULT_SERIES)
    parser.add_argument("--model", default="mr-denoise")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    model = load_model(args.model)
    if model.task.task != "denoise":
        parser.error(f"{args.model} is a {model.task.task} model: the bound is for denoisers")
    series = [s for s in load_series(args.folders) if model.accepts(s.modality)]
    print(f"{model.name}, guards {', '.join(model.guards) or 'none'}, {len(series)} series")
    print("| level | method | PSNR | SSIM |")
    print("| --- | --- | ---: | ---: |")
    for level in model.task.eval_levels:
        mean = average([bound_and_baselines(model, s, level) for s in series])
        for name, m in mean.items():
            print(f"| {level:g} | {name} | {m['psnr']:.2f} | {m['ssim']:.4f} |")
        best = max((n for n in mean if n != "perfect, guarded"), key=lambda n: mean[n]["psnr"])
        room = mean["perfect, guarded"]["psnr"] - mean[best]["psnr"]
        said = (f"{room:+.2f} dB" if np.isfinite(room)
                else "unbounded (the guard leaves the reference as it is)")
        print(f"| {level:g} | largest gain over {best} the guard allows | {said} | |")


if __name__ == "__main__":
    main()
