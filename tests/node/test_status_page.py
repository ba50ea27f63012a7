"""The status page in a real headless Chromium: a series sent by storescu, its thumbnails,
the rule tester; the token and the PHI switch over plain HTTP.

Set DICOMNODE_SCREENSHOT_DIR to keep the screenshot (docs/status-page.png is made so).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.node.conftest import MR_COUNT, sr_rule
from tests.peers import storescu, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FOLDER = '[[destinations]]\nname = "out"\ntype = "folder"\npath = "{path}"\n'


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    """Headless Chromium, fresh profile, no traffic but to the page's own loopback server."""
    assert Path(CHROMIUM).exists(), "chromium is missing: run make peers"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--virtual-time-budget=20000", *extra, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def _done_node(node_factory, tmp_path: Path, mr_files: list[Path], http_extra: str = ""):
    node = node_factory(sr_rule(destinations='["out"]'),
                        FOLDER.format(path=tmp_path / "out"),
                        node_extra="", idle_seconds=1.0)
    if http_extra:
        node.config.write_text(node.config.read_text().replace(
            f"[http]\nport = {node.http_port}\n", f"[http]\nport = {node.http_port}\n{http_extra}"))
    node.start()
    storescu(mr_files[0].parent, node.port)
    wait_for(lambda: node.job_states() == ["done"], 180, "the MR series derived and delivered")
    return node


@pytest.mark.network
@pytest.mark.slow
def test_status_page_shows_the_series_and_its_thumbnails_in_chromium(
        tmp_path: Path, node_factory, mr_files: list[Path]) -> None:
    node = _done_node(node_factory, tmp_path, mr_files)
    series_uid = str(pydicom.dcmread(mr_files[0], stop_before_pixels=True).SeriesInstanceUID)
    base = f"http://127.0.0.1:{node.http_port}"
    try:
        dom = chromium(f"{base}/", tmp_path / "profile1", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = dom.stdout
        assert f"data-series=\"{series_uid}\"" in page  # listed, by storescu's series UID
        assert f">{MR_COUNT}<" in page  # its instance count
        for kind in ("before", "after", "difference"):  # rendered by the node, loaded
            assert f'alt="{kind}" src="/thumb/' in page and 'data-loaded="yes"' in page
        assert page.count('data-loaded="yes"') == 3 and 'data-loaded="no"' not in page
        assert "healthy" in page and "NOT healthy" not in page
        patient = pydicom.dcmread(mr_files[0], stop_before_pixels=True)
        assert str(patient.PatientName) not in page and str(patient.PatientID) not in page

        rules = chromium(f"{base}/rules?series={series_uid}", tmp_path / "profile2",
                         "--dump-dom")
        assert 'data-rule="mr-sr" data-matches="yes"' in rules.stdout
        assert "Modality" in rules.stdout and ">MR<" in rules.stdout  # why: the value held

        shot = tmp_path / "status-page.png"
        result = chromium(f"{base}/", tmp_path / "profile3", f"--screenshot={shot}",
                          "--window-size=1280,1200", "--hide-scrollbars")
        assert result.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        with Image.open(shot) as image:
            assert image.size == (1280, 1200)
            grey = np.asarray(image.convert("L"))
        assert np.unique(grey).size > 50  # text and images, not a blank page
        if os.environ.get("DICOMNODE_SCREENSHOT_DIR"):
            shutil.copy(shot, Path(os.environ["DICOMNODE_SCREENSHOT_DIR"]) / shot.name)
    finally:
        assert node.stop() == 0


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read().decode("utf-8", "replace")
            return response.status, body, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace"), dict(exc.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


@pytest.mark.network
@pytest.mark.slow
def test_token_file_guards_every_page_but_healthz_and_show_phi_reveals_names(
        tmp_path: Path, node_factory, mr_files: list[Path]) -> None:
    token = tmp_path / "http.token"
    token.write_text("page-token-123\n")
    token.chmod(0o600)
    node = _done_node(node_factory, tmp_path, mr_files,
                      f'token_file = "{token}"\nshow_phi = true\n')
    base = f"http://127.0.0.1:{node.http_port}"
    patient = pydicom.dcmread(mr_files[0], stop_before_pixels=True)
    try:
        assert _get(f"{base}/healthz")[0] == 200
        for path in ("/", "/api/series", "/metrics", "/rules", "/thumb/1/before.png"):
            code, _, headers = _get(base + path)
            assert code == 401 and "Bearer" in headers.get("WWW-Authenticate", ""), path
        assert _get(f"{base}/", {"Authorization": "Bearer wrong"})[0] == 401
        code, page, _ = _get(f"{base}/", {"Authorization": "Bearer page-token-123"})
        assert code == 200 and str(patient.PatientID) in page  # show_phi = true
        code, _, headers = _get(f"{base}/thumb/1/difference.png",
                                {"Authorization": "Bearer page-token-123"})
        assert code == 200 and headers["Content-Type"] == "image/png"
        # A browser signs in once and carries the cookie.
        opener = urllib.request.build_opener(_NoRedirect)
        request = urllib.request.Request(f"{base}/login", data=b"token=page-token-123")
        try:
            opener.open(request, timeout=10)
            raise AssertionError("login did not redirect")
        except urllib.error.HTTPError as exc:
            assert exc.code == 303
            cookie = exc.headers["Set-Cookie"].split(";", 1)[0]
        assert "page-token-123" not in cookie
        assert _get(f"{base}/", {"Cookie": cookie})[0] == 200
        bad = urllib.request.Request(f"{base}/login", data=b"token=nope")
        assert _get_request(bad) == 401
    finally:
        assert node.stop() == 0


def _get_request(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
