"""Quality against speed of several denoisers on the same slices, in one run (issue 16's
Pareto table).

Each candidate is a zoo model or a training run folder / checkpoint, with the precision it
would run at (``NAME[:fp32|bf16]``; a zoo card that does not list that precision gets it for
this run only, so that whether it may be listed can be measured). All candidates and the SPEC
section 7 baselines get the same seeded degraded slices
(``training.evaluate.evaluation_slices``, so the numbers match ``dicomnode-train evaluate``
for the same series and ``--max-slices``), and each is timed on 512x512 slices through the
node's engine path (``engine.volume.enhance_volume``: card normalisation, tiled inference,
guards) at that precision, in this process, on ``--threads`` threads; the baselines are timed
as evaluate runs them. Prints one table; writes nothing.

    nice -n 15 .venv/bin/python bench/pareto.py \\
        --data ../shared/data/train/ct_philips_brilliance16_chest_lungdx_a0001_kernelB_64sl \\
        --max-slices 10 ct-denoise:fp32 runs/ct-denoise-multi:bf16
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dicomnode.engine.volume import enhance_volume  # noqa: E402
from training.data import evenly_spaced, load_series  # noqa: E402
from training.evaluate import (  # noqa: E402
    LoadedModel,
    evaluation_slices,
    load_model,
    restore_padding,
)
from training.metrics import average, series_metrics  # noqa: E402

AMP = {"fp32": "none", "bf16": "bf16"}


def parse_candidate(text: str) -> tuple[str, str]:
    name, _, precision = text.rpartition(":") if ":" in text else (text, "", "fp32")
    if precision not in AMP:
        raise SystemExit(f"{text}: precision must be one of {', '.join(AMP)}")
    return name, precision


def allowing(model: LoadedModel, precision: str) -> LoadedModel:
    """A zoo model with ``precision`` added to its card's validated precisions (this bench
    measures whether it should be; the node never runs a card outside its list)."""
    if model.card is None or precision in model.card.precisions:
        return model
    card = dataclasses.replace(model.card, precisions=(*model.card.precisions, precision))
    return dataclasses.replace(model, card=card)


def time_per_slice(model: LoadedModel, precision: str, slices: np.ndarray, rounds: int) -> float:
    """Median ms per slice of the node's path over ``rounds`` runs after one warm-up."""
    enhancer = model.enhancer("cpu", AMP[precision])
    enhance_volume(enhancer, slices[:1], model.batch_size)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        enhance_volume(enhancer, slices, model.batch_size)
        times.append((time.perf_counter() - started) / len(slices))
    return 1000 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+", help="NAME[:fp32|bf16]: zoo name or run folder")
    parser.add_argument("--data", type=Path, action="append", required=True)
    parser.add_argument("--max-slices", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-slices", type=int, default=4,
                        help="512x512 slices per timing run (the first series' first ones)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    candidates = [(text, *parse_candidate(text)) for text in args.candidates]
    models = {text: allowing(load_model(name), precision) for text, name, precision in candidates}
    first = next(iter(models.values()))
    tasks = {(m.task.kind, tuple(m.task.eval_levels)) for m in models.values()}
    if len(tasks) != 1:
        raise SystemExit(f"the candidates are scored on different degradations: {tasks}")
    task = first.task
    series = [evenly_spaced(s, args.max_slices) for s in load_series(args.data)
              if first.accepts(s.modality)]
    if not series:
        raise SystemExit("no series of the candidates' modality in --data")

    per_level: dict[float, list[dict[str, dict[str, float]]]] = {}
    for s in series:
        for level in task.eval_levels:
            inputs, reference, shown, mask = evaluation_slices(task, s, level)
            outputs = {name: restore_padding(out, reference, mask)
                       for name, out in task.baselines(shown).items()}
            outputs["input"] = inputs
            for text, _, precision in candidates:
                with torch.inference_mode():
                    out = models[text].predict(shown, amp=AMP[precision])
                outputs[text] = restore_padding(out, reference, mask)
            per_level.setdefault(level, []).append(series_metrics(reference, outputs))

    timing = np.stack([np.asarray(x, dtype=np.float32) for x in series[0].slices])
    timing = timing[: args.time_slices]
    if timing.shape[-2:] != (512, 512):
        print(f"note: timing slices are {timing.shape[-2]}x{timing.shape[-1]}, not 512x512")
    speed = {}
    for text, _, precision in candidates:
        with torch.inference_mode():
            speed[text] = time_per_slice(models[text], precision, timing, args.rounds)

    started = time.perf_counter()  # the baselines as evaluate runs them, one call per series
    baseline_outputs = task.baselines(timing)
    baseline_ms = 1000 * (time.perf_counter() - started) / len(timing)

    levels = sorted(per_level)
    means = {level: average(per_level[level]) for level in levels}
    baselines = [k for k in means[levels[0]] if k not in models and k != "input"]
    print(f"{len(series)} series, {sum(len(s.slices) for s in series)} slices, "
          f"threads {args.threads}, timing {len(timing)} slices x {args.rounds} rounds")
    head = "| candidate | parameters | ms/slice |" + "".join(
        f" PSNR / SSIM @ {lv:g} | gain vs {baselines[0] if baselines else '-'} @ {lv:g} |"
        for lv in levels)
    print(head)
    print("|" + " --- |" * (3 + 2 * len(levels)))
    rows = [(text, None) for text, _, _ in candidates] + [(b, b) for b in baselines]
    for text, baseline in rows:
        network = None if baseline else models[text].network
        params = "-" if network is None else f"{sum(p.numel() for p in network.parameters()):,}"
        if baseline is None:
            ms = f"{speed[text]:.0f}"
        elif len(baseline_outputs) == 1:
            ms = f"{baseline_ms:.0f}"
        else:
            ms = f"{baseline_ms:.0f} (all baselines)"
        cells = ""
        for level in levels:
            m = means[level][text]
            gain = m["psnr"] - means[level][baselines[0]]["psnr"] if baselines else float("nan")
            cells += f" {m['psnr']:.2f} / {m['ssim']:.4f} | {gain:+.2f} dB |"
        print(f"| {text} | {params} | {ms} |{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
