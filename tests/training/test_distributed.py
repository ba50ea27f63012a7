"""Training across machines: two torchrun "nodes" (two launchers, one process each) on loopback.

The same launch a GPU cluster uses (docs/TRAINING.md): ``torchrun --nnodes 2 --node_rank R
--master_addr HOST --master_port P``, each node its own launcher and process group member; here
both nodes are this machine and the rendezvous is on 127.0.0.1, with gloo on the CPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.training.test_train_export import _config
from training.checkpoint import CHECKPOINT, HISTORY
from training.export import dumps_toml

TORCHRUN = Path(sys.executable).with_name("torchrun")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_node_torchrun_launch_on_loopback(mr_patients: Path, tmp_path: Path):
    raw = _config(mr_patients, tmp_path / "run")
    raw["train"].update(iterations=3, threads=1)
    config = tmp_path / "two-nodes.toml"
    config.write_text(dumps_toml(raw))
    assert tomllib.loads(config.read_text())["train"]["iterations"] == 3
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd())}
    nodes = [
        subprocess.Popen(
            [str(TORCHRUN), "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1",
             "--master_addr", "127.0.0.1", "--master_port", str(port),
             "-m", "training.cli", "train", str(config), "--no-progress"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=Path.cwd())
        for rank in (0, 1)
    ]
    outputs = []
    for node in nodes:
        try:
            out, _ = node.communicate(timeout=240)
        finally:
            if node.poll() is None:
                node.kill()
        outputs.append(out)
    for node, out in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, out[-3000:]
    history = json.loads((tmp_path / "run" / HISTORY).read_text())
    assert history["world_size"] == 2  # one process group over both launchers
    assert history["iteration"] == [1, 2, 3]
    assert (tmp_path / "run" / CHECKPOINT).is_file()
    assert "processes=2" in outputs[0]
