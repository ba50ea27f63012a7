"""Operations commands against real peers: echo, status and serve's start-up checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.node.conftest import pacs_destination, sr_rule
from tests.peers import NodeProcess, Orthanc, free_port

pytestmark = [pytest.mark.network]


def test_echo_a_configured_destination_and_an_address(orthanc: Orthanc, tmp_path: Path):
    node = NodeProcess(tmp_path, sr_rule(), pacs_destination(orthanc))
    assert node.cli("echo", "pacs").returncode == 0
    direct = node.cli("echo", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    assert direct.returncode == 0 and "success" in direct.stdout
    refused = node.cli("echo", f"NOBODY@127.0.0.1:{free_port()}")
    assert refused.returncode == 1 and "no association" in refused.stderr
    unknown = node.cli("echo", "nowhere")
    assert unknown.returncode == 1 and "no destination 'nowhere'" in unknown.stderr


def test_status_before_anything_was_received(tmp_path: Path):
    node = NodeProcess(tmp_path, "", "")
    result = node.cli("status")
    assert result.returncode == 1 and "no index" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_a_bad_config(tmp_path: Path):
    node = NodeProcess(tmp_path, sr_rule(destinations='["nowhere"]'), "")
    result = node.cli("serve")
    assert result.returncode == 1
    assert "rules[0].destinations[0]: no destination named 'nowhere'" in result.stderr
