"""The ``dicomnode-train`` command line (SPEC section 7).

The commands are declared here so that their names and help are stable; each one reports
plainly that it is not part of this version yet instead of pretending to work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

COMMANDS = {
    "tcia": "query and download series from The Cancer Imaging Archive",
    "train": "train a network from a TOML config",
    "evaluate": "metrics of a model against the classical baselines",
    "export": "write models/NAME/ (card + safetensors) from a checkpoint",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomnode-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text).add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    print(f"dicomnode-train {args.command}: not part of this version yet "
          "(the training module is being built)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
