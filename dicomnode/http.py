"""HTTP server: the status page (``/``, ``/series/UID``, ``/rules``, thumbnails) and the
machine endpoints /healthz, /metrics (Prometheus text) and /api/series (JSON).

Loopback by default (``[http] host``). With ``[http] token_file`` (required off loopback)
every request but /healthz needs ``Authorization: Bearer <token>``; a browser signs in once
at /login and then carries an HttpOnly, SameSite=Strict cookie derived from the token.
Nothing here shows patient names or IDs unless ``[http] show_phi = true``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from dicomnode.config import Config
from dicomnode.errors import ConfigError, InputRejected
from dicomnode.logs import event

log = logging.getLogger(__name__)

COOKIE = "dicomnode_session"
PUBLIC = {"/healthz", "/login"}
_THUMB = re.compile(r"^/thumb/(\d+)/(before|after|difference)\.png$")
MAX_FORM = 4096


class StatusServer:
    def __init__(self, host: str, port: int, health: Callable[[], dict],
                 metrics: Callable[[], bytes], series: Callable[[], list[dict]],
                 config: Config | None = None) -> None:
        token = read_token(config.http.token_file) if config and config.http.token_file else None
        handler = _handler(health, metrics, series, config, token)
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http",
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def read_token(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8").split()
    except OSError as exc:
        raise ConfigError([f"http.token_file: cannot read {path}: {exc}"]) from exc
    if not lines:
        raise ConfigError([f"http.token_file: {path} is empty; put the bearer token in it"])
    return lines[0]


def session_value(token: str) -> str:
    """What the cookie holds: derived from the token, so the cookie never is the token."""
    return hashlib.sha256(b"dicomnode-session:" + token.encode()).hexdigest()


def _handler(health: Callable[[], dict], metrics: Callable[[], bytes],
             series: Callable[[], list[dict]], config: Config | None,
             token: str | None) -> type[BaseHTTPRequestHandler]:
    from dicomnode import status_page

    data = status_page.StatusData(config) if config is not None else None
    ae_title = config.node.ae_title if config is not None else ""

    class Handler(BaseHTTPRequestHandler):
        server_version = "dicomnode"

        def do_GET(self) -> None:
            try:
                self._get()
            except Exception:  # a bug on one page must not take the server down
                log.exception("http_error path=%s", urlsplit(self.path).path)
                self._send(500, "application/json", b'{"error": "internal error"}')

        def _get(self) -> None:
            url = urlsplit(self.path)
            path = url.path
            if not self._authorized(path):
                return
            if path == "/healthz":
                report = health()
                self._send(200 if report["ok"] else 503, "application/json",
                           json.dumps(report).encode())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics())
            elif path == "/api/series":
                self._send(200, "application/json", json.dumps(series(), default=str).encode())
            elif data is None:
                self._send(404, "application/json", b'{"error": "not found"}')
            elif path == "/":
                self._html(200, "Status", status_page.status_body(data, health()))
            elif path.startswith("/series/"):
                body = status_page.series_body(data, unquote(path[len("/series/"):]))
                if body is None:
                    self._html(404, "Not found", "<section>no such series</section>")
                else:
                    self._html(200, "Series", body)
            elif path == "/rules":
                chosen = parse_qs(url.query).get("series", [""])[0]
                self._html(200, "Rule tester", status_page.rules_body(data, chosen))
            elif path == "/login":
                self._html(200, "Sign in", status_page.login_body(False))
            elif match := _THUMB.match(path):
                self._thumbnail(int(match[1]), match[2])
            else:
                self._send(404, "application/json", b'{"error": "not found"}')

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/login" or token is None:
                self._send(404, "application/json", b'{"error": "not found"}')
                return
            length = min(int(self.headers.get("Content-Length") or 0), MAX_FORM)
            form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
            given = form.get("token", [""])[0].strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                event(log, "http_login_failed", logging.WARNING, peer=self.client_address[0])
                self._html(401, "Sign in", status_page.login_body(True))
                return
            self.send_response(303)
            self.send_header("Location", "/")
            self.send_header("Set-Cookie", f"{COOKIE}={session_value(token)}; HttpOnly; "
                             "SameSite=Strict; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _authorized(self, path: str) -> bool:
            if token is None or path in PUBLIC:
                return True
            header = self.headers.get("Authorization", "")
            if header.startswith("Bearer ") and hmac.compare_digest(
                    header[len("Bearer "):].strip().encode(), token.encode()):
                return True
            cookies = dict(part.strip().split("=", 1) for part in
                           self.headers.get("Cookie", "").split(";") if "=" in part)
            if hmac.compare_digest(cookies.get(COOKIE, "").encode(),
                                   session_value(token).encode()):
                return True
            if "text/html" in self.headers.get("Accept", ""):
                self._html(401, "Sign in", status_page.login_body(False))
            else:
                self._send(401, "application/json", b'{"error": "token required"}',
                           {"WWW-Authenticate": 'Bearer realm="dicomnode"'})
            return False

        def _thumbnail(self, job_id: int, kind: str) -> None:
            assert data is not None
            try:
                png = data.thumbnails(job_id)[kind]
            except InputRejected as exc:
                self._send(404, "application/json", json.dumps({"error": str(exc)}).encode())
                return
            self._send(200, "image/png", png, {"Cache-Control": "private, max-age=300"})

        def _html(self, code: int, title: str, body: str) -> None:
            self._send(code, "text/html; charset=utf-8", status_page.page(title, body, ae_title))

        def _send(self, code: int, content_type: str, body: bytes,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            if content_type.startswith("text/html"):
                self.send_header("Content-Security-Policy",
                                 "default-src 'self'; style-src 'unsafe-inline'; "
                                 "script-src 'unsafe-inline'; img-src 'self'")
                self.send_header("Cache-Control", "no-store")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes every few seconds would flood the log

    return Handler
