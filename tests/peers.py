"""Real peers on loopback for the node tests: the node itself, Orthanc and DCMTK.

Ports are taken free from the OS; waits poll a socket, an HTTP endpoint or a state with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"


def read_index(storage_dir: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Query a node's SQLite index read-only; empty before the node created it."""
    import sqlite3

    path = storage_dir / "index.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` on timeout."""
    pause = threading.Event()
    deadline = _now() + timeout
    while True:
        try:
            value = predicate()
        except Exception:  # the peer is not up yet
            value = None
        if value:
            return value
        if _now() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        pause.wait(interval)


def _now() -> float:
    import time

    return time.monotonic()


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


REPO = Path(__file__).resolve().parent.parent


def node_command() -> list[str]:
    """``dicomnode`` of this checkout (a console script would run whichever one is installed)."""
    return [sys.executable, "-m", "dicomnode.cli"]


def node_env() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), path) if p)}


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(folder: Path, port: int, called: str = "DICOMNODE", calling: str = "MODALITY",
             extra: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Send every ``*.dcm`` under ``folder`` like a modality would."""
    command = [STORESCU, "-aet", calling, "-aec", called, "+sd", "+r", "+sp", "*.dcm",
               *(extra or []), "127.0.0.1", str(port), str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, env=dcmtk_env(),
                            timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def echoscu(port: int, called: str = "DICOMNODE", calling: str = "MODALITY"
            ) -> subprocess.CompletedProcess:
    return subprocess.run([ECHOSCU, "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
                          capture_output=True, text=True, env=dcmtk_env(), timeout=60)


class NodeProcess:
    """``dicomnode serve`` as a real process with its own config and storage folder."""

    def __init__(self, workdir: Path, rules: str, destinations: str,
                 node_extra: str = "", idle_seconds: float = 1.0) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.http_port = free_port()
        self.config = workdir / "config.toml"
        self.log = workdir / "node.log"
        self.config.write_text(
            f'[node]\nae_title = "DICOMNODE"\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'storage_dir = "{workdir / "var"}"\nseries_idle_seconds = {idle_seconds}\n'
            f"min_free_disk_mb = 1\n{node_extra}\n"
            f'[http]\nport = {self.http_port}\n[worker]\nbatch_size = 8\n'
            f"{destinations}\n{rules}\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        handle = self.log.open("ab")
        self.process = subprocess.Popen(
            [*node_command(), "serve", "--config", str(self.config)], stdout=handle,
            stderr=subprocess.STDOUT, cwd=self.workdir, env=node_env())
        handle.close()
        wait_for(lambda: self._alive() and port_open(self.port), timeout, "the node's SCP")

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"node exited {self.process.returncode}: {self.log_text()}")
        return True

    def stop(self, timeout: float = 60) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*node_command(), *args, "--config", str(self.config)],
                              capture_output=True, text=True, timeout=60, env=node_env())

    def status(self) -> dict:
        result = self.cli("status", "--json")
        if result.returncode != 0:
            return {}
        return json.loads(result.stdout)

    def http(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                        timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Read the node's SQLite index directly (fast enough to poll every few ms)."""
        return read_index(self.workdir / "var", sql, args)

    def job_states(self) -> list[str]:
        return [row[0] for row in self.query("SELECT state FROM jobs")]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Orthanc:
    """A real Orthanc PACS as a plain foreground process with its own folder and ports."""

    def __init__(self, workdir: Path, aet: str = "ORTHANC", check_called_aet: bool = False
                 ) -> None:
        self.workdir = workdir
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "test-pacs", "StorageDirectory": str(workdir / "db"),
            "IndexDirectory": str(workdir / "db"), "HttpPort": self.http_port,
            "DicomPort": self.dicom_port, "DicomAet": aet, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": check_called_aet, "Plugins": [],
            "DicomAlwaysAllowStore": True, "StorageCompression": False,
            "HttpDescribeErrors": True,
        }))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        """Start (or start again after ``stop``, same ports and storage)."""
        env = {**os.environ, "TCP_NODELAY": "1"}
        self.process = subprocess.Popen(
            [ORTHANC, f"--logdir={self.workdir}", str(self.config)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.get("/system"), timeout, "Orthanc's REST API")
        wait_for(lambda: port_open(self.dicom_port), timeout, "Orthanc's DICOM port")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                    timeout=10) as response:
            body = response.read()
        try:
            return json.loads(body)
        except ValueError:
            return body

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def sop_instance_uids(self) -> list[str]:
        uids = []
        for instance in self.get("/instances?expand"):
            uids.append(instance["MainDicomTags"]["SOPInstanceUID"])
        return uids

    def series_of(self, series_uid: str) -> list[dict]:
        result = []
        for series in self.get("/series?expand"):
            if series["MainDicomTags"].get("SeriesInstanceUID") == series_uid:
                result.append(series)
        return result

    def instance_file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")
