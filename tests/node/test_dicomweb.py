"""A dicomweb destination against a real Orthanc with its DICOMweb plugin (STOW-RS).

Between the node and Orthanc sits a loopback TCP relay (a seam the test owns, not a fake
PACS): it passes every byte through, except that it swallows Orthanc's first answer, as a
network that drops a response after the archive stored the instances would.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

import pytest

from tests.node.conftest import MR_COUNT, sr_rule
from tests.peers import Orthanc, storescu, wait_for

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
TOKEN = "s3cret-token-for-the-test"


class LossyRelay:
    """Relays loopback TCP to ``upstream``; the first response to a POST is dropped."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.drops = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._drop_pending = True
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            seen_post = threading.Event()
            threading.Thread(target=self._pump_request, args=(client, server, seen_post),
                             daemon=True).start()
            threading.Thread(target=self._pump_response, args=(server, client, seen_post),
                             daemon=True).start()

    def _pump_request(self, source: socket.socket, target: socket.socket,
                      seen_post: threading.Event) -> None:
        try:
            while data := source.recv(65536):
                if data.startswith(b"POST "):
                    seen_post.set()
                    with self._lock:
                        self.requests.append(data[:4096])
                target.sendall(data)
        except OSError:
            pass
        finally:
            _close(target)

    def _pump_response(self, source: socket.socket, target: socket.socket,
                       seen_post: threading.Event) -> None:
        try:
            while data := source.recv(65536):
                with self._lock:
                    drop = self._drop_pending and seen_post.is_set()
                    if drop:
                        self._drop_pending = False
                        self.drops += 1
                if drop:  # Orthanc has stored the batch and answered: the answer is lost
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            _close(target)
            _close(source)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def orthanc_web(tmp_path: Path):
    assert DICOMWEB_PLUGIN.exists(), "Orthanc's DICOMweb plugin is missing: run make peers"
    pacs = Orthanc(tmp_path / "orthanc-web")
    config = json.loads(pacs.config.read_text())
    config["Plugins"] = [str(DICOMWEB_PLUGIN)]
    config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    pacs.config.write_text(json.dumps(config))
    pacs.start()
    yield pacs
    pacs.stop()


@pytest.mark.network
@pytest.mark.slow
def test_derived_series_arrives_once_over_stow_rs_despite_a_lost_response(
        tmp_path: Path, orthanc_web: Orthanc, node_factory, mr_files: list[Path]) -> None:
    relay = LossyRelay(orthanc_web.http_port)
    token = tmp_path / "web.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    destination = (f'[[destinations]]\nname = "web"\ntype = "dicomweb"\n'
                   f'url = "http://127.0.0.1:{relay.port}/dicom-web"\nauth_file = "{token}"\n')
    node = node_factory(sr_rule(destinations='["web"]'), destination)
    node.start()
    try:
        storescu(mr_files[0].parent, node.port)
        rows = wait_for(
            lambda: (r := node.query("SELECT sop_uid, state, attempts FROM deliveries"))
            and len(r) == MR_COUNT and all(s == "sent" for _, s, _ in r) and r,
            180, "every derived instance delivered over STOW-RS")
    finally:
        assert node.stop() == 0
        relay.close()
    assert relay.drops == 1
    assert max(attempts for _, _, attempts in rows) >= 2  # the lost batch was sent again
    derived = {uid for uid, _, _ in rows}
    # No duplicate: Orthanc holds each derived instance once, and nothing else.
    assert orthanc_web.instance_count() == MR_COUNT
    assert set(orthanc_web.sop_instance_uids()) == derived
    series = orthanc_web.get("/series?expand")
    assert len(series) == 1
    assert series[0]["MainDicomTags"]["SeriesDescription"].endswith(" [dicomnode SRx2]")
    tags = orthanc_web.get(f"/instances/{series[0]['Instances'][0]}/simplified-tags")
    assert tags["ImageType"].startswith("DERIVED\\SECONDARY")
    assert all(f"Authorization: Bearer {TOKEN}".encode() in r for r in relay.requests)
    assert node.status()["destinations"]["web"].get("sent") == MR_COUNT
