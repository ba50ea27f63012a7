"""Run the fault tests and write what they counted into docs/RELIABILITY.md.

    python bench/fault_report.py            # the fault tests as CI runs them (3 kills)
    python bench/fault_report.py --soak     # the soak as `make soak` runs it (20 kills over
                                            # 10 series; SOAK_KILLS / SOAK_SERIES override)
    python bench/fault_report.py --out FILE # elsewhere

Each fault test records its own counts (``tests/fault_record.py``) before asserting on them,
so a row shows what was measured. Only the section between the ``faults`` markers is
replaced. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- faults:begin (bench/fault_report.py) -->", "<!-- faults:end -->"
TESTS = ["tests/node/test_faults.py", "tests/node/test_pacs_behaviour.py",
         "tests/node/test_disk_full.py", "tests/node/test_soak.py"]


def run(soak: bool, log: Path) -> int:
    env = {**os.environ, "DICOMNODE_FAULT_LOG": str(log)}
    if soak:
        env.setdefault("SOAK_KILLS", "20")
        env.setdefault("SOAK_SERIES", "10")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    return subprocess.run(command, cwd=REPO, env=env).returncode


def table(entries: list[dict], soak: bool, exit_code: int) -> str:
    kills = os.environ.get("SOAK_KILLS", "20" if soak else "3")
    lines = [
        BEGIN,
        "## Faults",
        "",
        f"Written by `python bench/fault_report.py{' --soak' if soak else ''}` on "
        f"{date.today().isoformat()} ({platform.machine()}, {os.cpu_count()} cores; "
        f"soak with {kills} kills); pytest exit status {exit_code}. Counts are the tests' "
        "own, taken before their assertions: *received* is the node's index, *delivered* "
        "what the PACS holds (Orthanc) or acknowledged (scripted PACS), once per copy.",
        "",
        "| fault | expected | received | lost | delivered | duplicated | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for entry in entries:
        expected, received = entry["expected"], entry["received"]
        lost = "" if received is None else expected - received
        delivered = entry.get("delivered_unique", "")
        duplicates = entry.get("duplicates", "")
        if delivered != "" and isinstance(lost, int):
            lost = max(lost, expected - delivered)  # lost on either side counts
        lines.append(f"| {entry['fault']} | {expected} | {received} | {lost} | {delivered} "
                     f"| {duplicates} | {entry.get('note', '')} |")
    if not entries:
        lines.append("| (no fault test recorded anything: see the pytest output) | | | | | | |")
    lines += ["", END]
    return "\n".join(lines)


def write(section: str, out: Path) -> None:
    text = out.read_text() if out.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    out.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak", action="store_true", help="20 kills over 10 series")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "RELIABILITY.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "faults.jsonl"
        code = run(args.soak, log)
        entries = [json.loads(line) for line in log.read_text().splitlines()] \
            if log.exists() else []
    write(table(entries, args.soak, code), args.out)
    print(f"{len(entries)} fault rows written to {args.out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
