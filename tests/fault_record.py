"""What each fault test counted, for the fault table of docs/RELIABILITY.md.

The fault tests call :func:`record` with their own counts just before asserting on them, so
the table (``bench/fault_report.py``) shows what the tests measured, not what they expect.
Nothing is written unless ``DICOMNODE_FAULT_LOG`` names a file (JSON lines).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable

ENV = "DICOMNODE_FAULT_LOG"


def record(fault: str, expected: int, received: int | None,
           delivered: Iterable[str] | None = None, note: str = "") -> None:
    """``received``: instances in the node's index; ``delivered``: SOP Instance UIDs as the
    PACS holds or acknowledged them, one entry per accepted copy (so duplicates show)."""
    path = os.environ.get(ENV)
    if not path:
        return
    entry: dict[str, object] = {"fault": fault, "expected": expected, "received": received,
                                "note": note}
    if delivered is not None:
        copies = Counter(delivered)
        entry["delivered_unique"] = len(copies)
        entry["duplicates"] = sum(copies.values()) - len(copies)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
