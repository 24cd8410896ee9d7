"""The healthCheckNodePort server (agent/health_check_serving.py) on loopback: answers, bounds."""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator

import pytest

from membrane.agent.health_check_serving import MAX_REQUEST, HealthCheckServer
from membrane.services import HealthCheck


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    return sock


@pytest.fixture
def server() -> Iterator[HealthCheckServer]:
    srv = HealthCheckServer(_listen, max_connections=2, timeout=0.5)
    yield srv
    srv.close()


def _get(port: int) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/")
    reply = conn.getresponse()
    return reply.status, json.loads(reply.read())


def _until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError("condition not met")


def test_answers_200_with_local_endpoints_and_503_without(server: HealthCheckServer) -> None:
    up, down = _free_port(), _free_port()
    server.update({up: HealthCheck("shop", "web", up, 2), down: HealthCheck("shop", "db", down, 0)})
    _until(lambda: _get(up)[0] == 200)
    assert _get(up) == (200, {"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 2})
    assert _get(down) == (503, {"service": {"namespace": "shop", "name": "db"}, "localEndpoints": 0})
    server.update({up: HealthCheck("shop", "web", up, 0)})  # the last local endpoint left; db gone
    _until(lambda: _get(up)[0] == 503)

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", down), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False
    _until(refused)  # the port of a service that no longer has one is closed


def test_bounded_request_size_time_and_connections(server: HealthCheckServer) -> None:
    port = _free_port()
    server.update({port: HealthCheck("shop", "web", port, 1)})
    _until(lambda: _get(port)[0] == 200)
    # A request larger than the bound is closed unanswered.
    with socket.create_connection(("127.0.0.1", port)) as big:
        big.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_REQUEST + 10))
        big.settimeout(5)
        try:
            assert big.recv(100) == b""
        except ConnectionResetError:
            pass  # closed with the request unread: a reset
    # Idle connections are dropped after the timeout; while two are open, a third waits.
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    started = time.monotonic()
    status, _ = _get(port)  # served once the idle ones time out (0.5 s)
    assert status == 200 and time.monotonic() - started >= 0.3
    for sock in idle:
        sock.settimeout(5)
        assert sock.recv(10) == b""
        sock.close()
