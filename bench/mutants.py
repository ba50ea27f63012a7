"""Mutation check: break the product on purpose, in a scratch copy, and see which tests notice.

Each mutant is one deliberate break of the kind a review found unnoticed (issue 20): random
weights behind an updated sha256, a spool write without fsync, a lost C-STORE response taken as
permanent, row and column spacing swapped in the super-resolution position shift, and a few
more. For each, the tests that should catch it run against a copy of the repository with that
one break applied; a mutant whose tests still pass *survives*. The same tests first run on the
unbroken copy (they must pass there, or a kill means nothing). The repository itself is never
modified.

    nice -n 15 .venv/bin/python bench/mutants.py [--head] [--only NAME ...] [--keep]

``make mutants`` runs it. Exit status 0 when every mutant was killed and the baseline passed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    tests: tuple[str, ...]
    path: str = ""  # file edited (relative to the repository); empty for a zoo mutant
    old: str = ""
    new: str = ""
    random_model: str = ""  # run the tests on a zoo ($DICOMNODE_MODELS) where it is random


def _random_weights(model: str) -> Mutant:
    return Mutant(f"random-weights-{model}",
                  f"{model}'s weights replaced by random tensors of the same shapes (the "
                  "network's own initialisation), card sha256 updated as a re-export would",
                  ("tests/test_shipped_models.py::test_model_beats_the_best_baseline_by_its_"
                   f"margin[{model}]",), random_model=model)


MUTANTS = (
    *(_random_weights(m) for m in ("mr-sr-x2", "mr-denoise", "ct-denoise", "xr-denoise")),
    Mutant("wal-no-sync", "the write-ahead log answers Success without its fdatasync",
           ("tests/node/test_durability.py::test_success_is_sent_only_after_the_instance_is_"
            "durable",),
           "dicomnode/wal.py", "                try:\n                    self._datasync(fd)\n",
           "                try:\n                    pass\n"),
    Mutant("lost-response-permanent",
           "a C-STORE without a response (abort, DIMSE timeout) classified permanent",
           ("tests/node/test_lost_response.py",),
           "dicomnode/scu.py",
           'Outcome(delivery, False, True, "no C-STORE response (timeout or abort)")',
           'Outcome(delivery, False, False, "no C-STORE response (timeout or abort)")'),
    Mutant("ipp-spacing-swapped",
           "row and column spacing swapped in the super-resolution position shift",
           ("tests/test_geometry_sr.py",),
           "dicomnode/derive.py", "row_spacing, column_spacing = spacing",
           "column_spacing, row_spacing = spacing"),
    Mutant("intensity-range-of-output",
           "the intensity guard's 0.5 % bound taken of the output's range, not the input's",
           ("tests/engine/test_guards.py",),
           "dicomnode/engine/guards.py", "value_range = max(float(np.ptp(source))",
           "value_range = max(float(np.ptp(output))"),
)


def scratch_copy(target: Path, head: bool) -> None:
    """The repository's files in ``target``: the working tree's tracked and untracked
    (not ignored) files as they are, or with ``head`` the last commit."""
    if head:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "-co",
                             "--exclude-standard"], check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, copy = ROOT / name, target / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        copy.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), copy)
        else:
            shutil.copy2(source, copy)


def run_tests(repo: Path, tests: tuple[str, ...], env: dict[str, str], first_failure: bool
              ) -> tuple[bool, list[str], float, str]:
    """(passed, failed test ids, seconds, output tail) of pytest on ``tests`` in ``repo``."""
    command = [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
               *(["-x"] if first_failure else []), *tests]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True,
                            timeout=3600)
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    return result.returncode == 0, failed, seconds, output[-3000:]


def apply(repo: Path, mutant: Mutant, work: Path) -> dict[str, str]:
    """Break the copy as ``mutant`` says; returns extra environment for its tests."""
    if mutant.random_model:
        sys.path.insert(0, str(repo))
        from tests.model_quality import randomise_zoo

        zoo = randomise_zoo(repo / "models", work / f"zoo-{mutant.name}",
                            names=[mutant.random_model])
        return {"DICOMNODE_MODELS": str(zoo)}
    path = repo / mutant.path
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.old) != 1:
        raise LookupError(f"{mutant.path}: {mutant.old!r} found {text.count(mutant.old)} "
                          "times, expected once: the code moved, update bench/mutants.py")
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")
    return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", action="store_true",
                        help="copy the last commit instead of the working tree")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help=f"mutants to run ({', '.join(m.name for m in MUTANTS)})")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown or not chosen:
        parser.error(f"unknown mutant(s) {sorted(unknown)}")
    work = Path(tempfile.mkdtemp(prefix="dicomnode-mutants-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DICOMNODE_MODELS", "PYTHONPATH")}
    rows, problems = [], []
    try:
        base = work / "base"
        base.mkdir()
        scratch_copy(base, args.head)
        env["PYTHONPATH"] = str(base)
        probe = "import dicomnode; print(dicomnode.__file__)"
        where = subprocess.run([sys.executable, "-c", probe], cwd=base, env=env,
                               capture_output=True, text=True).stdout.strip()
        if not Path(where).resolve().is_relative_to(base.resolve()):
            raise SystemExit(f"dicomnode imports from {where}, not from the scratch copy")
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        print(f"scratch copy of {'HEAD' if args.head else 'the working tree'}: {work}",
              flush=True)
        passed, failed, seconds, tail = run_tests(base, tests, env, first_failure=False)
        print(f"baseline (unbroken): {'pass' if passed else 'FAIL'} in {seconds:.0f} s",
              flush=True)
        if not passed:
            print(tail)
            problems.append(f"baseline failed: {failed}")
        for mutant in chosen:
            repo = work / mutant.name
            shutil.copytree(base, repo, symlinks=True)
            try:
                extra = apply(repo, mutant, work)
            except LookupError as exc:
                problems.append(str(exc))
                rows.append((mutant, "NOT APPLIED", [], 0.0))
                continue
            run_env = {**env, "PYTHONPATH": str(repo), **extra}
            passed, failed, seconds, tail = run_tests(repo, mutant.tests, run_env, True)
            verdict = "SURVIVED" if passed else "killed"
            if passed:
                problems.append(f"{mutant.name} survived")
            elif not failed:
                print(tail)  # it failed without naming a test: show why
            rows.append((mutant, verdict, failed, seconds))
            print(f"{mutant.name}: {verdict} in {seconds:.0f} s {' '.join(failed)}", flush=True)
            if not args.keep:
                shutil.rmtree(repo, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| mutant | break | result | caught by | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for mutant, verdict, failed, seconds in rows:
        caught = ", ".join(f"`{f}`" for f in failed) or "-"
        print(f"| {mutant.name} | {mutant.what} | {verdict} | {caught} | {seconds:.0f} |")
    survivors = sum(1 for _, verdict, _, _ in rows if verdict == "SURVIVED")
    print(f"\n{len(rows)} mutant(s), {survivors} survived"
          + (f"; problems: {'; '.join(problems)}" if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
