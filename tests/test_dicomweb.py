"""``type = "dicomweb"`` destinations in config.toml: parsed, checked, token file guarded."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import check_files, parse_config
from dicomnode.errors import ConfigError

RULE = {"name": "r", "model": "bicubic-x2", "destinations": ["web"]}


def _config(destination: dict):
    return parse_config({"destinations": [{"name": "web", "type": "dicomweb", **destination}],
                         "rules": [RULE]})


def test_dicomweb_destination_is_parsed() -> None:
    config = _config({"url": "http://pacs:8042/dicom-web/"})
    destination = config.destination("web")
    assert destination.type == "dicomweb"
    assert destination.url == "http://pacs:8042/dicom-web"
    assert destination.auth_file is None


@pytest.mark.parametrize(("entry", "problem"), [
    ({}, "destinations[0].url: required key is missing"),
    ({"url": "pacs:8042"}, "destinations[0].url: expected an http:// or https:// URL"),
    ({"url": "http://pacs/dicom-web", "ae_title": "X"}, "destinations[0].ae_title: unknown key"),
])
def test_bad_dicomweb_destinations_name_the_key(entry: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        _config(entry)
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_auth_file_must_exist_and_be_private(tmp_path: Path) -> None:
    token = tmp_path / "token"
    config = _config({"url": "https://pacs/dicom-web", "auth_file": str(token)})
    assert check_files(config) == [f"destinations[0].auth_file: file {token} does not exist"]
    token.write_text("abc\n")
    token.chmod(0o644)
    assert "chmod 600" in check_files(config)[0]
    token.chmod(0o600)
    assert check_files(config) == []
