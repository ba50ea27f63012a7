"""A real Ray cluster on this machine for the cluster tests and bench/cluster.py.

Each Ray node is started with ``ray start`` in its own temp dir, one CPU and one unit of the
``dicomnode`` resource (one model replica per node). Ray replaces 127.0.0.1 with the machine's
own address for its node IP (``services.resolve_ip_for_localhost``); traffic stays on this host.
Only processes this helper started are stopped: the ones whose command line names one of its
temp dirs, and their descendants (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.peers import free_port, port_open, wait_for

RAY = str(Path(sys.executable).with_name("ray"))


def ray_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None and Path(RAY).exists()


class RayCluster:
    """A head node plus worker nodes, each a separate raylet with its own temp dir."""

    def __init__(self, cpus_per_node: int = 1) -> None:
        # Short paths: Ray's unix sockets live under the temp dir (108-byte limit).
        self.root = Path(tempfile.mkdtemp(prefix="dnray", dir="/tmp"))
        self.port = free_port()
        self.cpus = cpus_per_node
        self.nodes: list[Path] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str]) -> Path:
        temp = self.root / f"n{len(self.nodes)}"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        command = [RAY, "start", *args, "--num-cpus", str(self.cpus), "--num-gpus", "0",
                   "--resources", '{"dicomnode": 1}', "--temp-dir", str(temp),
                   "--disable-usage-stats"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
        self.nodes.append(temp)
        if result.returncode != 0:
            raise AssertionError(f"ray start failed: {result.stdout[-2000:]}"
                                 f"{result.stderr[-2000:]}")
        return temp

    def start_head(self) -> None:
        self._start(["--head", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
                     "--include-dashboard=false",
                     "--dashboard-agent-listen-port", str(free_port())])
        wait_for(lambda: port_open(self.port), 60, "the Ray head's GCS port")

    def add_node(self) -> Path:
        before = len(self.raylets())
        temp = self._start(["--address", self.address, "--node-ip-address", "127.0.0.1",
                            "--dashboard-agent-listen-port", str(free_port())])
        wait_for(lambda: len(self.raylets()) > before, 60, "the new node's raylet")
        return temp

    def raylets(self) -> list[int]:
        return [pid for pid, cmd in _processes().items()
                if "raylet" in cmd.split(" ", 1)[0] and str(self.root) in cmd]

    def kill_node(self, temp: Path) -> list[int]:
        """SIGKILL a node: its raylet, everything under it (the replica's worker process,
        agents) and the processes naming its temp dir. Returns the pids killed."""
        roots = [pid for pid, cmd in _processes().items() if f"{temp}/" in cmd or
                 cmd.endswith(str(temp))]
        victims = _with_descendants(roots)
        for pid in victims:
            _signal(pid, signal.SIGKILL)
        return victims

    def stop(self) -> None:
        """Stop every process this cluster started (TERM, then KILL), remove its dirs."""
        victims = _with_descendants([pid for pid, cmd in _processes().items()
                                     if str(self.root) in cmd])
        for pid in victims:
            _signal(pid, signal.SIGTERM)
        try:
            wait_for(lambda: not any(_alive(p) for p in victims), 20, "Ray processes to end")
        except TimeoutError:
            for pid in victims:
                _signal(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _processes() -> dict[int, str]:
    result = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            result[int(entry.name)] = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return result


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _with_descendants(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _processes():
        parent = _parent(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    result, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid not in result:
            result.append(pid)
            todo.extend(children.get(pid, []))
    return result


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
