"""What became of one instance sent to a destination, for every kind of destination.

The DICOM (C-STORE) and DICOMweb (STOW-RS) senders both answer with an :class:`Outcome` per
instance and read DICOM status codes the same way, so the forwarder's retry decision is one
rule; kept apart from ``scu`` so the two senders do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomnode.spool import Delivery

WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Outcome:
    delivery: Delivery
    ok: bool
    transient: bool = False
    error: str = ""
    attempted: bool = True  # False: never sent on this association; goes again at once


def classify_status(code: int) -> tuple[bool, bool]:
    """(ok, transient) for a C-STORE response status."""
    if code == 0x0000 or code in WARNING_STATUSES:
        return True, False
    if 0xA700 <= code <= 0xA7FF:
        return False, True  # out of resources: the PACS may recover
    return False, False  # 0xA9xx, 0xCxxx, 0x0122 ...: this instance will never be accepted
