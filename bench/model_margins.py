"""How far each learned model beats its best baseline, and how far random weights fall short.

Runs ``tests/model_quality.py`` (the evaluation ``tests/test_shipped_models.py`` asserts on) for
the zoo (``$DICOMNODE_MODELS`` or ``models/``) and for two copies of it whose weights are random
tensors of the same shapes with the sha256 updated: the networks' own initialisation and
standard normal values. Prints one markdown row per model and level: gain in PSNR over the
best baseline (dB) and in SSIM, and the margin the test requires.

    PYTHONPATH=. nice -n 15 .venv/bin/python bench/model_margins.py [NAME ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicomnode.engine.cards import default_zoo_dir
from tests import model_quality as mq


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="models (default: every learned one)")
    args = parser.parse_args()
    zoo = default_zoo_dir()
    names = args.names or mq.learned_names(zoo)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        zoos = {"shipped": zoo}
        for kind in mq.RANDOM_KINDS:
            zoos[kind] = mq.randomise_zoo(zoo, work / f"zoo-{kind}", kind)
        print(f"zoo: {zoo}")
        print("| model | degradation | best baseline (PSNR dB / SSIM) | shipped gain | "
              "random (init) gain | random (randn) gain | margin | seconds (shipped) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in names:
            rows: dict[str, list[mq.Evaluation]] = {}
            seconds = 0.0
            for label, folder in zoos.items():
                started = time.perf_counter()
                rows[label] = mq.evaluate(name, folder, work / label / name)
                if label == "shipped":
                    seconds = time.perf_counter() - started
            margin = mq.MARGIN_DB.get(name, mq.DEFAULT_MARGIN_DB)
            for index, result in enumerate(rows["shipped"]):
                best = result.scores[result.best_baseline]
                cells = [f"{rows[k][index].gain_db:+.2f} dB / {rows[k][index].ssim_gain:+.4f}"
                         for k in zoos]
                print(f"| {name} | {result.kind} {result.level:g} | {result.best_baseline} "
                      f"{best.psnr:.2f} / {best.ssim:.4f} | {' | '.join(cells)} | "
                      f"{margin:+.2f} dB | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
