"""Domain errors, translated into exit codes or DICOM statuses at the edges.

Every message says what was found and what an administrator should do about it.
"""

from __future__ import annotations


class DicomNodeError(Exception):
    """Base of every error the node raises on purpose (never a bug)."""


class ConfigError(DicomNodeError):
    """The configuration is invalid; ``problems`` lists every issue with its key path."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class InputRejected(DicomNodeError):
    """A received or read object cannot be processed; the message names the attribute and value."""


class DeriveError(DicomNodeError):
    """A derived object could not be built from its sources."""


class ModelError(DicomNodeError):
    """A model card, its weights or its architecture is missing or inconsistent."""


class DeviceError(DicomNodeError):
    """The asked compute device or precision is absent, or it ran out of memory."""


class SendError(DicomNodeError):
    """Sending to a destination failed; ``transient`` says whether a retry may succeed."""

    def __init__(self, message: str, status: int | None = None, transient: bool = True) -> None:
        self.status = status
        self.transient = transient
        super().__init__(message)
