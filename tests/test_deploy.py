"""deploy/dicomnode.service: what an administrator installs, checked by systemd itself."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "dicomnode.service"
INSTALLED = "/opt/dicomnode/bin/dicomnode"


def _service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_unit_runs_hardened_under_its_own_user() -> None:
    service = _service()
    assert service["User"] == "dicomnode" and service["Group"] == "dicomnode"
    state = service["StateDirectory"]
    assert service["WorkingDirectory"] == f"/var/lib/{state}"
    assert service["ExecStart"] == (f"{INSTALLED} serve --config /var/lib/{state}/config.toml")
    assert service["ProtectSystem"] == "strict"
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"  # the node's graceful shutdown
    assert int(service["TimeoutStopSec"]) > 30  # longer than the node's 30 s grace


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is missing: `make peers` installs the systemd package")
    # verify checks that ExecStart exists: point it at this environment's dicomnode.
    local = Path(sys.executable).parent / "dicomnode"
    assert local.exists(), "the dicomnode console script is not installed in this venv"
    unit = tmp_path / "dicomnode.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(local)))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                            timeout=120)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and "System has not been booted with systemd" in output:
        pytest.skip(f"systemd-analyze cannot run here: {output}")
    # Unknown keys and bad values are only warnings (exit 0): any output is a failure.
    assert result.returncode == 0 and not output, output
