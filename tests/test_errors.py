"""Domain errors (dicomnode.errors): what an administrator reads, and what the edges rely on."""

from __future__ import annotations

import inspect

from dicomnode import errors
from dicomnode.errors import ConfigError, DicomNodeError, SendError


def test_every_error_is_a_dicomnode_error() -> None:
    """The command line turns a DicomNodeError into exit 1 and a message, anything else into a
    traceback: every error raised on purpose must be one."""
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, Exception) and c.__module__ == errors.__name__]
    assert len(classes) >= 7
    assert all(issubclass(c, DicomNodeError) for c in classes)


def test_a_config_error_lists_every_problem_under_its_source() -> None:
    problems = ["node.port: expected an integer 1-65535, got 0", "rules[0].model: missing"]
    error = ConfigError(problems, "/etc/dicomnode/config.toml")
    problems.append("added later")  # the error keeps its own copy
    assert error.problems == problems[:2] and error.source == "/etc/dicomnode/config.toml"
    assert str(error) == ("/etc/dicomnode/config.toml: 2 problem(s):\n"
                          "  - node.port: expected an integer 1-65535, got 0\n"
                          "  - rules[0].model: missing")
    assert str(ConfigError(["x"])).startswith("config: 1 problem(s):")


def test_a_send_error_is_transient_unless_said_otherwise() -> None:
    """A failed send is retried unless the PACS said it never will accept the instance."""
    transient = SendError("association rejected")
    assert transient.transient and transient.status is None
    permanent = SendError("refused: SOP class not supported", status=0x0122, transient=False)
    assert not permanent.transient and permanent.status == 0x0122
    assert str(permanent) == "refused: SOP class not supported"

