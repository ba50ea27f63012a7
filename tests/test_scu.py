"""Forwarding (dicomnode.scu): retry timing; the C-STORE exchanges with real peers are in
tests/node (test_lost_response.py, test_pacs_behaviour.py, test_end_to_end.py)."""

from __future__ import annotations

from dicomnode.scu import backoff


def test_backoff_doubles_from_5s_to_10min():
    assert [backoff(n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 600, 600]
