"""HTTP endpoints for kubelet probes and Prometheus: /healthz, /readyz, /metrics.

Shared by the agent and the operator (each with its own registry); the only place the
Prometheus exposition is served from.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class HttpServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, is_live: Callable[[], bool],
                 is_ready: Callable[[], bool], name: str = "http") -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    outer._send(self, 200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = is_live()
                    outer._send(self, 200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
                elif path == "/readyz":
                    ok = is_ready()
                    outer._send(self, 200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    outer._send(self, 404, b"not found\n")

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not news
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll interval: stop() waits for serve_forever to notice, at most this long.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=name, daemon=True)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "text/plain") -> None:
        handler.send_response(code)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
