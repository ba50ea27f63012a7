"""Structured logging: one line per event, ``event key=value`` or JSON with ``--log-json``.

Only cli.py calls ``configure``; library modules just log. Fields carry UIDs and AE titles,
never patient names or IDs at INFO level.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_FIELDS = "fields"


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``name`` with ``fields`` as one structured line."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS: fields})


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS, {})
        parts = [_timestamp(record), record.levelname.lower(), record.name, record.getMessage()]
        parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        line = " ".join(parts)
        if record.exc_info:
            line += " exception=" + _quote(_exception(self, record))
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _timestamp(record), "level": record.levelname.lower(),
            "logger": record.name, "event": record.getMessage(),
        }
        payload.update(getattr(record, _FIELDS, {}))
        if record.exc_info:
            payload["exception"] = _exception(self, record)
        return json.dumps(payload, default=str)


def _exception(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """Our own errors keep their traceback (a bug to fix); a library's (pydicom logging a
    decoder failure it also raises to us) keeps one line: the node already reports it."""
    if record.name.startswith("dicomnode") or not record.exc_info or not record.exc_info[1]:
        return formatter.formatException(record.exc_info)  # type: ignore[arg-type]
    error = record.exc_info[1]
    return f"{type(error).__name__}: {error}"


def configure(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if as_json else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("pynetdicom", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def _quote(value: Any) -> str:
    text = str(value)
    # Received values (UIDs, AE titles) reach the log: quote anything that could forge a line
    # or carry terminal control sequences.
    if not text or not text.isprintable() or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text
