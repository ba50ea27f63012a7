"""The TCIA client against a local server speaking the NBIA v1 shapes (never the real one)."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pydicom
import pytest

from tests.conftest import MR_DIR
from training import cli
from training.tcia import MANIFEST, TciaClient, TciaError, download, extract_verified

SERIES_UID = str(pydicom.dcmread(next(MR_DIR.glob("*.dcm")), stop_before_pixels=True)
                 .SeriesInstanceUID)
BAD_UID = "1.2.3.4.5.6.7.8.9"


def _series_zip(count: int = 3) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(MR_DIR.glob("*.dcm"))[:count]:
            archive.write(path, f"{SERIES_UID}/{path.name}")
        archive.writestr("LICENSE", "CC BY 4.0")
    return buffer.getvalue()


class FakeNbia:
    """State of the fake API: what it serves and what it was asked."""

    def __init__(self) -> None:
        self.zip = _series_zip()
        self.cut_next_download = False  # send half the zip, then drop the connection
        self.fail_next = 0  # answer 503 this many times
        self.requests: list[tuple[str, dict[str, list[str]], str | None]] = []
        self.series = [
            {"SeriesInstanceUID": SERIES_UID, "StudyInstanceUID": "1.2.3", "Modality": "MR",
             "PatientID": "P-1", "ImageCount": 3, "Collection": "Demo",
             "LicenseName": "CC BY 4.0",
             "LicenseURI": "https://creativecommons.org/licenses/by/4.0/"},
            {"SeriesInstanceUID": BAD_UID, "StudyInstanceUID": "1.2.4", "Modality": "CT",
             "PatientID": "P-2", "ImageCount": 1, "Collection": "Demo"},
        ]


def _handler(state: FakeNbia) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
                  ) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = parse_qs(url.query)
            endpoint = url.path.rsplit("/", 1)[-1]
            state.requests.append((endpoint, query, self.headers.get("Range")))
            if state.fail_next:
                state.fail_next -= 1
                self._send(503, b"busy", "text/plain", {"Retry-After": "0"})
                return
            if endpoint == "getCollectionValues":
                body = json.dumps([{"Collection": "Demo"}, {"Collection": "Another"}])
                self._send(200, body.encode(), "application/json")
            elif endpoint == "getSeries":
                rows = [r for r in state.series if r["Collection"] == query["Collection"][0]
                        and ("Modality" not in query or r["Modality"] == query["Modality"][0])]
                self._send(200, json.dumps(rows).encode() if rows else b"", "application/json")
            elif endpoint == "getImage":
                uid = query["SeriesInstanceUID"][0]
                data = state.zip if uid == SERIES_UID else b"PK\x03\x04 this is not a zip"
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                body = data[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if state.cut_next_download:
                    state.cut_next_download = False
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)
            else:
                self._send(404, b"unknown endpoint", "text/plain")

    return Handler


@pytest.fixture
def nbia() -> Iterator[tuple[FakeNbia, str]]:
    state = FakeNbia()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/nbia-api/services/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _client(url: str, retries: int = 2) -> TciaClient:
    return TciaClient(base_url=url, retries=retries, sleep=lambda _s: None, timeout_s=10)


def test_collections_and_series(nbia):
    state, url = nbia
    client = _client(url)
    assert client.collections() == ["Another", "Demo"]
    assert [r["Modality"] for r in client.series("Demo")] == ["CT", "MR"]  # sorted by UID
    assert [r["SeriesInstanceUID"] for r in client.series("Demo", "MR")] == [SERIES_UID]
    assert client.series("Nothing") == []  # NBIA answers an empty body
    assert state.requests[0][1]["format"] == ["json"]


def test_retries_politely_then_gives_up(nbia):
    state, url = nbia
    state.fail_next = 2
    waits: list[float] = []
    client = TciaClient(base_url=url, retries=2, sleep=waits.append, timeout_s=10)
    assert client.collections() == ["Another", "Demo"]
    assert waits == [0.0, 0.0]  # Retry-After honoured
    state.fail_next = 5
    with pytest.raises(TciaError, match="gave up after 3 tries"):
        client.collections()


def test_download_resumes_an_interrupted_zip_and_writes_a_manifest(nbia, tmp_path: Path):
    state, url = nbia
    state.cut_next_download = True
    # First run: no retries allowed, the connection drops mid-zip; the part file stays.
    manifest = download(_client(url, retries=0), "Demo", tmp_path, modality="MR")
    assert SERIES_UID in manifest["failed"]
    part = tmp_path / "Demo" / f"{SERIES_UID}.zip.part"
    kept = part.stat().st_size
    assert 0 < kept < len(state.zip)
    # Second run continues from the bytes on disk with a Range request.
    manifest = download(_client(url), "Demo", tmp_path, modality="MR")
    assert manifest["failed"] == {}
    ranges = [r for e, _q, r in state.requests if e == "getImage" and r]
    assert ranges == [f"bytes={kept}-"]
    assert not part.exists()
    entry = manifest["series"][SERIES_UID]
    assert entry["status"] == "complete" and entry["files"] == 3
    assert entry["licence"] == "CC BY 4.0" and entry["collection"] == "Demo"
    folder = tmp_path / entry["path"]
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 3
    originals = sorted(MR_DIR.glob("*.dcm"))[:3]
    assert [f.read_bytes() for f in files] == [o.read_bytes() for o in originals]
    assert (folder / "LICENSE").read_text() == "CC BY 4.0"
    assert json.loads((tmp_path / MANIFEST).read_text())["series"][SERIES_UID]["files"] == 3
    # A third run skips what is complete.
    before = len(state.requests)
    download(_client(url), "Demo", tmp_path, modality="MR")
    assert [e for e, _q, _r in state.requests[before:]] == ["getSeries"]


def test_a_bad_zip_is_rejected_and_nothing_is_kept(nbia, tmp_path: Path):
    _state, url = nbia
    manifest = download(_client(url), "Demo", tmp_path, modality="CT")
    assert "not a valid zip" in manifest["failed"][BAD_UID]
    assert BAD_UID not in manifest["series"]
    assert not list((tmp_path / "Demo").iterdir())


def test_zip_members_must_be_dicom_of_the_series(tmp_path: Path):
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../../evil.dcm", b"not dicom at all")
    with pytest.raises(TciaError, match="not DICOM"):
        extract_verified(path, SERIES_UID, tmp_path / "out", None)
    assert not (tmp_path.parent / "evil.dcm").exists()
    path.write_bytes(_series_zip(2))
    with pytest.raises(TciaError, match="belongs to series"):
        extract_verified(path, "9.9.9", tmp_path / "out", None)
    with pytest.raises(TciaError, match="the API says 5"):
        extract_verified(path, SERIES_UID, tmp_path / "out", 5)
    assert extract_verified(path, SERIES_UID, tmp_path / "out", 2) == 2


def test_cli_download_and_exit_codes(nbia, tmp_path: Path, capsys):
    _state, url = nbia
    assert cli.main(["tcia", "--base-url", url, "collections"]) == 0
    assert "Demo" in capsys.readouterr().out
    assert cli.main(["tcia", "--base-url", url, "series", "--collection", "Demo",
                     "--modality", "MR"]) == 0
    assert SERIES_UID in capsys.readouterr().out
    code = cli.main(["tcia", "--base-url", url, "download", "--collection", "Demo",
                     "--max-series", "2", "--out", str(tmp_path)])
    assert code == 1  # the bad series fails, the good one is kept
    out = capsys.readouterr().out
    assert "1 series complete" in out and BAD_UID in out
