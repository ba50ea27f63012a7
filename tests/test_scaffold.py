"""``dicomnode init DIR``: a config that check-config accepts and a node that starts from it."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.peers import echoscu, free_port, node_command, node_env, port_open, wait_for


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*node_command(), *args], capture_output=True, text=True,
                          timeout=120, env=node_env(), cwd=cwd)


def test_init_writes_a_config_that_check_config_accepts(tmp_path: Path) -> None:
    target = tmp_path / "node"
    result = _run("init", str(target))
    assert result.returncode == 0, result.stderr
    config = target / "config.toml"
    for folder in ("var", "var/outbox", "secrets"):
        assert (target / folder).is_dir()
    assert (target / "secrets").stat().st_mode & 0o077 == 0
    # Run from elsewhere: every path in the file is absolute, as a service needs.
    check = _run("check-config", "--config", str(config), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    raw = tomllib.loads(config.read_text())
    assert Path(raw["node"]["storage_dir"]) == target / "var"
    assert raw["http"]["host"] == "127.0.0.1"  # the status page stays on loopback by default
    text = config.read_text()
    for commented in ("[node.tls]", 'type = "dicom"', "allowed_calling_aets"):
        assert commented in text  # the administrator finds what to uncomment


def test_init_never_overwrites_an_existing_config(tmp_path: Path) -> None:
    assert _run("init", str(tmp_path)).returncode == 0
    config = tmp_path / "config.toml"
    config.write_text(config.read_text() + "# edited by the administrator\n")
    again = _run("init", str(tmp_path))
    assert again.returncode == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert config.read_text().endswith("# edited by the administrator\n")
    assert _run("init", str(tmp_path), "--force").returncode == 0
    assert "edited" not in config.read_text()


def test_init_refuses_bad_options_before_writing(tmp_path: Path) -> None:
    result = _run("init", str(tmp_path / "n"), "--ae-title", "A" * 17)
    assert result.returncode == 1
    assert "node.ae_title" in result.stderr and "16 characters" in result.stderr
    assert not (tmp_path / "n").exists()


@pytest.mark.network
@pytest.mark.slow
def test_node_serves_from_an_initialised_folder(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    target = tmp_path / "node"
    assert _run("init", str(target), "--port", str(port), "--http-port",
                str(http_port)).returncode == 0
    log = (tmp_path / "node.log").open("wb")
    process = subprocess.Popen([*node_command(), "serve", "--config",
                                str(target / "config.toml")], stdout=log,
                               stderr=subprocess.STDOUT, cwd=tmp_path, env=node_env())
    try:
        # The status port opens last (node_started); polling the SCP port instead would open
        # an association slot per poll.
        wait_for(lambda: process.poll() is None and port_open(http_port), 120,
                 "the node started from the initialised folder")
        assert echoscu(port).returncode == 0
        assert (target / "var" / "index.sqlite").exists()
    finally:
        process.terminate()  # SIGTERM, as systemd stops it
        assert process.wait(60) == 0, (tmp_path / "node.log").read_text()
        log.close()
