"""The training modules import in a fresh interpreter and never pull in the server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(f"training.{p.stem}" for p in (ROOT / "training").glob("*.py")
                 if p.stem != "__init__")
# What the training module may use from the package (STYLE: never the server).
ALLOWED = {"dicomnode", "dicomnode.nets", "dicomnode.degradations", "dicomnode.series",
           "dicomnode.pixels", "dicomnode.zoo", "dicomnode.classical", "dicomnode.errors"}


@pytest.mark.slow
def test_training_imports_without_server_modules():
    # One interpreter (torch takes seconds to import); each module first imported on its own
    # line, so a circular import still fails with the module's name in the traceback.
    code = ("import importlib, json, sys\n"
            f"for name in {MODULES!r}:\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('dicomnode'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, env={"PYTHONPATH": str(ROOT),
                                                        "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    outside = {m for m in loaded if not any(m == a or m.startswith(a + ".") for a in ALLOWED)}
    assert not outside, f"training imports {sorted(outside)}"
    assert len(MODULES) >= 10
