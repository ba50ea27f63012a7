"""Per-instance send outcomes (dicomnode.outcomes): which DIMSE statuses count as sent."""

from __future__ import annotations

import pytest

from dicomnode.outcomes import classify_status


@pytest.mark.parametrize(("code", "expected"), [
    (0x0000, (True, False)), (0xB000, (True, False)), (0xA700, (False, True)),
    (0xA7FF, (False, True)), (0xA900, (False, False)), (0xC000, (False, False)),
    (0x0122, (False, False)),
])
def test_status_classification(code: int, expected: tuple[bool, bool]):
    assert classify_status(code) == expected
