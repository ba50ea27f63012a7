"""A spool disk that fills up: 0xA700, nothing half-written indexed, recovery when space returns.

Uses a small tmpfs mounted by the test (CI runs as root); skipped where mounting is refused.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MR_DIR
from tests.fault_record import record
from tests.peers import NodeProcess, storescu, wait_for

pytestmark = [pytest.mark.network]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs",
                             str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(path: Path, leave_mb: float) -> Path:
    """Occupy the disk until only ``leave_mb`` stays free."""
    stat = os.statvfs(path)
    free = stat.f_bavail * stat.f_frsize
    filler = path / "filler.bin"
    with filler.open("wb") as handle:
        handle.truncate(0)
        remaining = max(int(free - leave_mb * 2**20), 0)
        block = b"\0" * 2**20
        while remaining > 0:
            handle.write(block[: min(remaining, len(block))])
            remaining -= min(remaining, len(block))
    return filler


def _spool_consistent(node: NodeProcess) -> None:
    """Every indexed instance exists and is complete; no temp file left in a series folder."""
    for (path, size) in node.query("SELECT path, size FROM instances"):
        assert Path(path).stat().st_size == size
    assert not list((node.workdir / "var" / "spool" / "series").rglob(".tmp-*"))


@pytest.fixture
def started(small_disk: Path) -> Iterator[list[NodeProcess]]:
    """Nodes a test started; stopped (before the file system goes) even when it fails."""
    nodes: list[NodeProcess] = []
    yield nodes
    for node in nodes:
        node.stop()


def _node_on(small_disk: Path, tmp_path: Path, min_free_disk_mb: int,
             started: list[NodeProcess]) -> NodeProcess:
    """A started node whose spool and index live on the small file system."""
    (tmp_path / "n").mkdir()
    node = NodeProcess(tmp_path / "n", "", "", idle_seconds=60)
    node.config.write_text(node.config.read_text()
                           .replace(f'storage_dir = "{node.workdir / "var"}"',
                                    f'storage_dir = "{small_disk / "var"}"')
                           .replace("min_free_disk_mb = 1",
                                    f"min_free_disk_mb = {min_free_disk_mb}"))
    node.workdir = small_disk  # node.query reads small_disk/var/index.sqlite
    started.append(node)
    node.start()
    return node


def test_threshold_answers_a700_then_recovers(small_disk: Path, tmp_path: Path,
                                             started: list[NodeProcess]):
    node = _node_on(small_disk, tmp_path, min_free_disk_mb=8, started=started)
    filler = _fill(small_disk, leave_mb=6)
    refused = storescu(MR_DIR, node.port, check=False, extra=["-v"])
    assert refused.returncode != 0
    assert "Refused: OutOfResources" in refused.stdout + refused.stderr
    assert "status=0xA700" in node.log.read_text()
    assert node.query("SELECT COUNT(*) FROM instances")[0][0] == 0
    filler.unlink()  # space returns
    storescu(MR_DIR, node.port)
    wait_for(lambda: node.query("SELECT COUNT(*) FROM instances")[0][0] == 35, 30,
             "all 35 instances after space returned")
    record("spool disk below min_free_disk_mb (0xA700), then space returns", 35,
           node.query("SELECT COUNT(*) FROM instances")[0][0],
           note="refused while full; the modality resent after")
    _spool_consistent(node)
    assert node.stop() == 0


def test_write_error_answers_a700_and_leaves_no_partial_file(small_disk: Path, tmp_path: Path,
                                                            started: list[NodeProcess]):
    node = _node_on(small_disk, tmp_path, min_free_disk_mb=0, started=started)
    _fill(small_disk, leave_mb=2)  # room for a few instances, then ENOSPC mid-write
    result = storescu(MR_DIR, node.port, check=False, extra=["-v"])
    assert result.returncode != 0
    stored = node.query("SELECT COUNT(*) FROM instances")[0][0]
    acknowledged = (result.stdout + result.stderr).count("Received Store Response (Success)")
    record("disk fills up mid-write (ENOSPC, 0xA700)", acknowledged, stored,
           note="expected = instances the node answered Success")
    assert stored == acknowledged  # every Success is in the index, nothing else is
    assert 0 < stored < 35
    _spool_consistent(node)
    assert not list((small_disk / "var" / "spool" / "tmp").iterdir())
    assert "store_failed" in (tmp_path / "n" / "node.log").read_text()
    assert node.stop() == 0
