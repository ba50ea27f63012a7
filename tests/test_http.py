"""The HTTP server (dicomnode.http) on loopback: endpoints, status codes, the token check."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicomnode.config import parse_config
from dicomnode.http import COOKIE, StatusServer, session_value

TOKEN = "s3cret-token"
Serve = Callable[..., StatusServer]


def _server(tmp_path: Path, healthy: bool, token: bool) -> StatusServer:
    table = {"node": {"storage_dir": str(tmp_path / "var")}}
    if token:
        (tmp_path / "token").write_text(TOKEN + "\n")
        table["http"] = {"token_file": str(tmp_path / "token")}
    return StatusServer("127.0.0.1", 0, health=lambda: {"ok": healthy, "checks": {}},
                        metrics=lambda: b"dicomnode_up 1\n",
                        series=lambda: [{"series_uid": "1.2.3", "state": "received"}],
                        config=parse_config(table))


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    started: list[StatusServer] = []

    def start(healthy: bool = True, token: bool = False) -> StatusServer:
        server = _server(tmp_path, healthy, token)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _get(server: StatusServer, path: str, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_healthz_answers_503_when_the_node_is_unhealthy(serve: Serve) -> None:
    status, _, body = _get(serve(healthy=True), "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    status, _, body = _get(serve(healthy=False), "/healthz")
    assert status == 503 and json.loads(body)["ok"] is False


def test_metrics_and_series_endpoints(serve: Serve) -> None:
    server = serve()
    status, headers, body = _get(server, "/metrics")
    assert status == 200 and body == b"dicomnode_up 1\n"
    assert headers["Content-Type"].startswith("text/plain")
    status, _, body = _get(server, "/api/series")
    assert status == 200 and json.loads(body) == [{"series_uid": "1.2.3", "state": "received"}]
    assert _get(server, "/no/such/page")[0] == 404


def test_a_token_guards_everything_but_healthz(serve: Serve) -> None:
    server = serve(token=True)
    status, headers, _ = _get(server, "/api/series")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert _get(server, "/api/series", {"Authorization": "Bearer wrong"})[0] == 401
    assert _get(server, "/api/series", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert _get(server, "/api/series", {"Cookie": f"{COOKIE}={session_value(TOKEN)}"})[0] == 200
    assert _get(server, "/api/series", {"Cookie": f"{COOKIE}={TOKEN}"})[0] == 401  # not the token
    assert _get(server, "/healthz")[0] == 200  # the load balancer's check needs no token
