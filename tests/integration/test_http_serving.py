"""The probe/metrics HTTP server under hostile clients: half-open floods, slow senders,
oversized heads and clients that never read their answer cost no threads and do not lock the
probes out."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Gauge

from membrane.http_serving import HttpServer
from membrane_testkit.waiting import wait_for


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Gauge("membrane_test_value", "a value", registry=reg).set(7)
    return reg


@pytest.fixture
def server(registry: CollectorRegistry) -> Iterator[HttpServer]:
    srv = HttpServer("127.0.0.1", 0, registry, lambda: True, lambda: False, name="test-http",
                     max_connections=64, read_deadline=1.0, write_deadline=1.0)
    srv.start()
    yield srv
    srv.stop()


def get(port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def test_probes_and_metrics(server: HttpServer) -> None:
    assert get(server.port, "/healthz") == (200, b"ok\n")
    assert get(server.port, "/readyz") == (503, b"not ready\n")
    code, body = get(server.port, "/metrics?x=1")
    assert code == 200 and b"membrane_test_value 7.0" in body
    assert get(server.port, "/nope")[0] == 404
    assert raw(server.port, b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405")
    assert raw(server.port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    head = raw(server.port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 3" in head and head.endswith(b"\r\n\r\n")


def test_400_half_open_connections_cost_no_threads_and_probes_still_answer(registry: CollectorRegistry) -> None:
    # A long read deadline: only the cap can make room here.
    server = HttpServer("127.0.0.1", 0, registry, lambda: True, lambda: True, max_connections=64, read_deadline=60)
    server.start()
    threads_before = threading.active_count()
    flood = []
    try:
        for i in range(400):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never finishes
            flood.append(sock)
        # Observation window (not synchronisation): the server gets time to accept and read the flood,
        # and the cap must hold throughout.
        time.sleep(0.2)
        # The cap holds, the flood costs no threads, and a probe is answered at once.
        assert server.open_connections <= server.max_connections
        assert threading.active_count() <= threads_before + 2  # at most the worker pool appears
        assert get(server.port, "/healthz", timeout=3) == (200, b"ok\n")
        assert server.evicted >= 400 - server.max_connections
        # The pushed-out clients were closed, not left hanging.
        flood[0].settimeout(3)
        try:
            assert flood[0].recv(100) == b""
        except ConnectionResetError:
            pass  # aborted: as closed as it gets
    finally:
        for sock in flood:
            sock.close()
        server.stop()


def test_a_slow_sender_is_cut_off_at_the_read_deadline(server: HttpServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        answer = b""
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: slowloris\r\n":  # one byte every 100 ms
                sock.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:
            pass  # cut off while still sending
        while chunk := sock.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408")
        assert time.monotonic() - started < 3.0  # the deadline counts the whole head, not per byte
    assert wait_for(lambda: server.open_connections == 0)


def test_an_oversized_head_is_refused(server: HttpServer) -> None:
    answer = raw(server.port, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431")


def test_a_client_that_never_reads_its_answer_is_dropped_at_the_write_deadline() -> None:
    reg = CollectorRegistry()
    big = Gauge("membrane_test_big", "many series", ["k"], registry=reg)
    for i in range(40000):  # a few MB of exposition: more than the socket buffers hold
        big.labels(f"series-{i:06d}-" + "x" * 40).set(i)
    srv = HttpServer("127.0.0.1", 0, reg, lambda: True, lambda: True, max_connections=8, write_deadline=1.0)
    srv.start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        assert wait_for(lambda: srv.open_connections == 1, 5)
        assert wait_for(lambda: srv.open_connections == 0, 10)  # given up, though the client never read
        assert get(srv.port, "/healthz") == (200, b"ok\n")
        sock.close()
    finally:
        srv.stop()


def test_stop_releases_the_port(registry: CollectorRegistry) -> None:
    srv = HttpServer("127.0.0.1", 0, registry, lambda: True, lambda: True)
    srv.start()
    port = srv.port
    assert get(port, "/healthz")[0] == 200
    srv.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    HttpServer("127.0.0.1", 0, registry, lambda: True, lambda: True).stop()  # never started: closes too
