"""Structured log lines stay one line each, whatever a peer sends or a library raises."""

from __future__ import annotations

import logging
import sys

from dicomnode.logs import _TextFormatter, event


def _record(name: str, message: str, fields: dict, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("decoder said no")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, exc_info)
    record.fields = fields  # what ``event`` attaches
    return record


def test_received_values_cannot_forge_lines_or_send_terminal_codes():
    """A UID or AE title from the network is data, never layout."""
    line = _TextFormatter().format(_record("dicomnode.scp", "store_refused", {
        "sop_uid": "1.2\ninfo dicomnode.scp instance_stored forged=1",
        "calling_aet": "EVIL\x1b[2J\x00",
    }))
    assert "\n" not in line and "\x1b" not in line and "\x00" not in line
    assert 'sop_uid="1.2\\ninfo' in line and "\\u001b[2J" in line


def test_library_exceptions_are_one_line_ours_keep_the_traceback():
    formatter = _TextFormatter()
    library = formatter.format(_record("pydicom.pixels", "decode failed", {}, exc=True))
    assert "Traceback" not in library and 'exception="ValueError: decoder said no"' in library
    ours = formatter.format(_record("dicomnode.worker", "job_crashed", {}, exc=True))
    assert "Traceback" in ours  # a bug of ours must show where it is


def test_event_attaches_fields(caplog):
    log = logging.getLogger("dicomnode.test")
    with caplog.at_level(logging.INFO):
        event(log, "something", uid="1.2")
    assert caplog.records[0].fields == {"uid": "1.2"}
