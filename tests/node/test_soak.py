"""kill -9 at random points while series stream in and derived series stream out.

CI runs a short version; ``make soak`` runs 20 kills over 10 series
(``SOAK_KILLS`` / ``SOAK_SERIES`` override). Counted at the end: every received instance is in
the node's index, every derived instance reached Orthanc exactly once.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pydicom
import pytest

from tests.conftest import MR_DIR
from tests.fault_record import record
from tests.node.conftest import pacs_destination, sr_rule
from tests.peers import NodeProcess, Orthanc, port_open, storescu, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]

KILLS = int(os.environ.get("SOAK_KILLS", "3"))
SERIES = int(os.environ.get("SOAK_SERIES", "3"))
SLICES = 35


def _make_series(root: Path, count: int) -> list[Path]:
    """``count`` copies of the MR series with their own deterministic UIDs."""
    sources = [pydicom.dcmread(p) for p in sorted(MR_DIR.glob("*.dcm"))]
    folders = []
    for s in range(count):
        folder = root / f"series{s}"
        folder.mkdir(parents=True)
        for i, ds in enumerate(sources):
            ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.777.{s + 1}"
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.777.{s + 1}.{i + 1}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
        folders.append(folder)
    return folders


def test_random_kill9_loses_and_duplicates_nothing(tmp_path: Path):
    rng = random.Random(20261125)
    folders = _make_series(tmp_path / "in", SERIES)
    pacs = Orthanc(tmp_path / "orthanc")
    pacs.start()
    (tmp_path / "node").mkdir()
    node = NodeProcess(tmp_path / "node", sr_rule(), pacs_destination(pacs), idle_seconds=1)
    node.start()
    sending_done = threading.Event()
    errors: list[str] = []

    def modality() -> None:
        """Sends each series until the node accepted all of it, as a modality retries."""
        try:
            for folder in folders:
                while storescu(folder, node.port, check=False).returncode != 0:
                    wait_for(lambda: port_open(node.port), 120, "the node to come back")
        except Exception as exc:  # reported by the main thread
            errors.append(repr(exc))
        finally:
            sending_done.set()

    sender = threading.Thread(target=modality, daemon=True)
    sender.start()
    pause = threading.Event()
    try:
        for _ in range(KILLS):
            pause.wait(rng.uniform(0.3, 3.0))
            node.kill9()
            node.start()
        wait_for(sending_done.is_set, 600, "the modality to finish sending")
        assert not errors, errors
        expected = SERIES * SLICES
        wait_for(lambda: node.job_states() == ["done"] * SERIES, 600, "every job done")
        received = node.query("SELECT COUNT(*) FROM instances")[0][0]
        uids = pacs.sop_instance_uids()
        record(f"{KILLS} random kill -9 while {SERIES} series stream in and out", expected,
               received, uids)
        assert received == expected  # 0 lost
        assert len(uids) == expected and len(set(uids)) == expected  # 0 lost, 0 duplicated
        assert node.stop() == 0
    finally:
        if node.process is not None and node.process.poll() is None:
            node.kill9()
        pacs.stop()
