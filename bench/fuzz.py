"""Long fuzz run of the C-STORE handler and the series reader (the CI run is 150 examples).

    python bench/fuzz.py --minutes 10            # both targets, fresh randomness each round
    python bench/fuzz.py --minutes 2 --target reader --seed 1234

Runs rounds of 200 Hypothesis examples with a new random seed each until the time is up,
prints how many cases ran, the statuses and reader outcomes seen, and any failure with its
shrunk example and the seed that reproduces it. Exit 1 on a failure.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.hostile import fuzz  # noqa: E402
from tests.hostile.corpus import Part10  # noqa: E402

ROUND = settings(max_examples=200, deadline=None, database=None, print_blob=True,
                 suppress_health_check=list(HealthCheck))


def store_round(round_seed: int, stats: Counter) -> None:
    with tempfile.TemporaryDirectory(prefix="fuzz-spool-") as folder:
        target = fuzz.StoreTarget(Path(folder))

        @seed(round_seed)
        @ROUND
        @given(part=fuzz.mutated_file,
               request_uid=st.one_of(st.none(), st.just(""), st.text(max_size=70)))
        def run(part: Part10, request_uid: str | None) -> None:
            stats["store cases"] += 1
            status = fuzz.check_store(target, part, request_uid)
            stats[f"store 0x{status:04X}"] += 1

        run()


def reader_round(round_seed: int, stats: Counter) -> None:
    @seed(round_seed)
    @ROUND
    @given(part=fuzz.mutated_file)
    def run(part: Part10) -> None:
        stats["reader cases"] += 1
        for outcome in fuzz.check_reader(part):
            stats[f"reader {outcome}"] += 1

    run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--target", choices=["store", "reader", "both"], default="both")
    parser.add_argument("--seed", type=int, default=None, help="first round's seed")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)  # refusals are the expected outcome, not news
    rng = random.Random(args.seed)
    rounds = {"store": [store_round], "reader": [reader_round],
              "both": [store_round, reader_round]}[args.target]
    stats: Counter = Counter()
    started = time.monotonic()
    deadline = started + args.minutes * 60
    count = 0
    while time.monotonic() < deadline:
        for round_function in rounds:
            round_seed = args.seed if args.seed is not None and count == 0 else \
                rng.randrange(2**32)
            count += 1
            try:
                round_function(round_seed, stats)
            except Exception:
                traceback.print_exc()
                print(f"FAILURE in {round_function.__name__} (reproduce: --target "
                      f"{round_function.__name__.split('_')[0]} --seed {round_seed})")
                _report(stats, started)
                return 1
    _report(stats, started)
    return 0


def _report(stats: Counter, started: float) -> None:
    minutes = (time.monotonic() - started) / 60
    print(f"fuzz: {stats['store cases']} store cases, {stats['reader cases']} reader cases "
          f"in {minutes:.1f} min (including Hypothesis' shrinking attempts)")
    for key, value in sorted(stats.items()):
        if key not in ("store cases", "reader cases"):
            print(f"  {key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
