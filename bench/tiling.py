"""What the tile size does to a learned model's output on an image larger than one tile.

The engine cuts images larger than ``tile`` into overlapping tiles blended with ramps. A network
whose receptive field is local gives the same pixels tiled or not; NAFNet's channel attention
averages over the whole input it is given, so for it the tile layout changes the output. This
prints, for each tile size (0 = the whole image in one pass), the PSNR against the reference on
the evaluation's seeded degraded image, the mean and largest difference to the untiled output,
and the columns where that difference changes most from one column to the next (a seam would put
them at the tiles' edges, which are printed too).

    PYTHONPATH=. python bench/tiling.py [--model xr-denoise] [--level 300] [--tiles 512 1024 0]
        [FOLDER]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from dicomnode import engine
from dicomnode.engine.inference import DEFAULT_OVERLAP, plan_tiles
from dicomnode.nets.registry import image_border
from training.data import load_series
from training.evaluate import evaluation_slices, load_model
from training.metrics import data_range, psnr

DEFAULT_FOLDER = Path("../shared/data/cr_tibia_fuji_wg04_RG3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--model", default="xr-denoise")
    parser.add_argument("--level", type=float, default=300.0)
    parser.add_argument("--tiles", type=int, nargs="+", default=[512, 1024, 0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    series = load_series([args.folder], loaded.card.modalities)[0]
    _, reference, shown, _ = evaluation_slices(loaded.task, series, args.level)
    value_range = data_range(reference)
    outputs: dict[int, np.ndarray] = {}
    for tile in sorted(set(args.tiles) | {0}, reverse=True):
        enhancer = engine.load(args.model, device="cpu", precision="fp32", tile=tile or None)
        started = time.perf_counter()
        outputs[tile] = enhancer.for_series(list(shown))(shown)
        seconds = time.perf_counter() - started
        print(f"tile {tile or 'none':>5}: PSNR {psnr(reference, outputs[tile], value_range):.3f} "
              f"dB ({seconds:.1f} s)")
    untiled = outputs[0]
    # the engine's plan: the image with its mirrored rim, tiles counting the rim too
    network = engine.load(args.model, device="cpu", precision="fp32").network
    rim = image_border(network)
    height, width = (n + 2 * rim for n in untiled.shape[-2:])
    for tile in args.tiles:
        if not tile:
            continue
        difference = outputs[tile] - untiled
        steps = np.abs(np.diff(difference, axis=-1)).mean(axis=(0, 1))
        worst = sorted(int(c) for c in np.argsort(steps)[-5:])
        plan = plan_tiles(height, width, int(getattr(network, "pad_multiple", 1)),
                          tile + 2 * rim, DEFAULT_OVERLAP)
        edges = sorted({s - rim for s in plan.columns.starts if s} |
                       {s + plan.columns.extent - rim for s in plan.columns.starts})
        print(f"tile {tile}: |tiled - untiled| mean {np.abs(difference).mean():.3f}, max "
              f"{np.abs(difference).max():.2f}; columns changing most {worst} (mean step "
              f"{steps.max():.3f}, median column {np.median(steps):.3f}); tile edges "
              f"{[e for e in edges if e < untiled.shape[-1]]}")


if __name__ == "__main__":
    main()
