"""HTTP status endpoints: /healthz, /metrics (Prometheus text) and /api/series (JSON).

Loopback by default (``[http] host``). The output carries UIDs, states and counts, never
patient names or IDs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST


class StatusServer:
    def __init__(self, host: str, port: int, health: Callable[[], dict],
                 metrics: Callable[[], bytes], series: Callable[[], list[dict]]) -> None:
        handler = _handler(health, metrics, series)
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


def _handler(health: Callable[[], dict], metrics: Callable[[], bytes],
             series: Callable[[], list[dict]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                report = health()
                self._send(200 if report["ok"] else 503, "application/json",
                           json.dumps(report).encode())
            elif path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, metrics())
            elif path == "/api/series":
                self._send(200, "application/json", json.dumps(series(), default=str).encode())
            else:
                self._send(404, "application/json", b'{"error": "not found"}')

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes every few seconds would flood the log

    return Handler
