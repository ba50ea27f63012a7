"""``pip install`` of the built wheel gives working commands with the model zoo inside.

The wheel is built from a copy of the tracked files and installed with ``--no-index
--no-deps`` into a fresh venv that sees this venv's third-party packages through a ``.pth``
line, so nothing is downloaded (torch least of all) and the checkout is not on its path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from dicomnode.engine.cards import model_names

REPO = Path(__file__).resolve().parent.parent


def _tracked_copy(target: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True, timeout=60).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            destination.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, destination)
    return target


@pytest.mark.slow
def test_wheel_installs_working_commands_with_the_model_zoo(tmp_path: Path) -> None:
    source = _tracked_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(dist), str(source)], check=True,
                   capture_output=True, timeout=600)
    wheel = next(dist.glob("dicomnode-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip())
    # Third-party packages (torch, pydicom ...) from this venv, after the fresh venv's own.
    (purelib / "deps_from_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-index", "--no-deps", str(wheel)], check=True, capture_output=True,
                   timeout=600)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "DICOMNODE_MODELS", "VIRTUAL_ENV")}
    run = {"capture_output": True, "text": True, "timeout": 300, "env": env, "cwd": tmp_path}

    where = subprocess.run([python, "-c", "import dicomnode; print(dicomnode.__file__)"],
                           **run)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr
    models = subprocess.run([venv / "bin" / "dicomnode", "models", "--json"], **run)
    assert models.returncode == 0, models.stderr
    assert {m["name"] for m in json.loads(models.stdout)} == set(model_names())
    # The learned weights came along and match their cards' sha256.
    init = subprocess.run([venv / "bin" / "dicomnode", "init", str(tmp_path / "node")], **run)
    assert init.returncode == 0, init.stderr
    check = subprocess.run([venv / "bin" / "dicomnode", "check-config", "--config",
                            str(tmp_path / "node" / "config.toml")], **run)
    assert check.returncode == 0, check.stderr
    train = subprocess.run([venv / "bin" / "dicomnode-train", "--help"], **run)
    assert train.returncode == 0 and "train" in train.stdout, train.stderr
