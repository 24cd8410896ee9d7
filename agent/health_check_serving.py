"""The `healthCheckNodePort` server: tells a cloud load balancer which nodes have local endpoints.

A LoadBalancer Service with `externalTrafficPolicy: Local` gets a health check port; the load
balancer sends traffic only to nodes that answer it with 200. As kube-proxy does, this node
answers 200 while the service has usable endpoints on it and 503 otherwise, with a small JSON
body (`{"service": {"namespace", "name"}, "localEndpoints": n}`).

The ports follow the service table (`update`, called by the LB manager after it applied). One
thread serves every port with a selector, bounded like the agent's HTTP server: at most
`max_connections` open at once (more wait in the listen backlog), a request of at most
`MAX_REQUEST` bytes read within `timeout` seconds, one answer, then close.
"""

from __future__ import annotations

import json
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from membrane.services import HealthCheck

log = logging.getLogger("membrane.healthcheck")

MAX_REQUEST = 4096
SocketFactory = Callable[[int], socket.socket]  # port -> a bound, listening TCP socket


def listen_any(port: int) -> socket.socket:
    """A listening socket on every address of this network namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(64)
    return sock


def answer(check: HealthCheck | None) -> bytes:
    """The HTTP response for a check (None: the port was just removed: 503)."""
    local = check.local_endpoints if check is not None else 0
    body = json.dumps({"service": {"namespace": check.namespace if check else "",
                                   "name": check.name if check else ""},
                       "localEndpoints": local}).encode()
    status = "200 OK" if local > 0 else "503 Service Unavailable"
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode() + body


@dataclass
class _Conn:
    sock: socket.socket
    port: int
    deadline: float
    data: bytearray = field(default_factory=bytearray)


class HealthCheckServer:
    def __init__(self, listen: SocketFactory = listen_any, max_connections: int = 64,
                 timeout: float = 2.0) -> None:
        self.listen = listen
        self.max_connections = max_connections
        self.timeout = timeout
        self.lock = threading.Lock()
        self.checks: dict[int, HealthCheck] = {}
        self.listeners: dict[int, socket.socket] = {}
        self.selector = selectors.DefaultSelector()
        self.conns: dict[int, _Conn] = {}  # fd -> connection
        # Listeners opened or closed by update(), (un)registered by the serving thread.
        self._pending_open: list[int] = []
        self._pending_close: list[socket.socket] = []
        self.wake_r, self.wake_w = socket.socketpair()
        self.selector.register(self.wake_r, selectors.EVENT_READ, None)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="healthcheck", daemon=True)
        self.thread.start()

    # --- the LB manager's side -------------------------------------------------------------------
    def update(self, checks: Mapping[int, HealthCheck]) -> None:
        """Serve exactly these ports (opened and closed as the services change)."""
        with self.lock:
            self.checks = dict(checks)
            for port in set(self.listeners) - set(checks):
                self._pending_close.append(self.listeners.pop(port))
            for port in set(checks) - set(self.listeners):
                try:
                    self.listeners[port] = self.listen(port)
                except OSError as exc:  # a port something else holds: say so, keep serving the rest
                    log.warning("health check port unavailable",
                                extra={"fields": {"port": port, "error": str(exc)}})
                    continue
                self._pending_open.append(port)
        self.wake_w.send(b"x")

    def close(self) -> None:
        self.stopped.set()
        self.wake_w.send(b"x")
        self.thread.join(timeout=5)
        for sock in [*self.listeners.values(), *(c.sock for c in self.conns.values())]:
            sock.close()
        self.selector.close()
        self.wake_r.close()
        self.wake_w.close()

    # --- the serving thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopped.is_set():
            for key, _events in self.selector.select(timeout=0.5):
                if key.fileobj is self.wake_r:
                    self.wake_r.recv(64)
                    self._sync()
                elif isinstance(key.data, int):
                    self._accept(key.fileobj, key.data)  # type: ignore[arg-type]  # a listener we registered
                else:
                    self._read(key.data)
            now = time.monotonic()
            for conn in [c for c in self.conns.values() if c.deadline < now]:
                self._drop(conn)

    def _sync(self) -> None:
        with self.lock:
            opened, self._pending_open = self._pending_open, []
            closed, self._pending_close = self._pending_close, []
            listeners = {port: self.listeners[port] for port in opened if port in self.listeners}
        for sock in closed:
            try:
                self.selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        for port, sock in listeners.items():
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, port)

    def _accept(self, listener: socket.socket, port: int) -> None:
        if len(self.conns) >= self.max_connections:
            return  # stays in the backlog until a connection ends
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        conn = _Conn(sock, port, time.monotonic() + self.timeout)
        self.conns[sock.fileno()] = conn
        self.selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        conn.data += chunk
        if chunk and b"\r\n\r\n" not in conn.data and len(conn.data) < MAX_REQUEST:
            return  # the rest of the request is on its way
        if chunk and b"\r\n\r\n" in conn.data:
            with self.lock:
                check = self.checks.get(conn.port)
            try:
                conn.sock.setblocking(True)
                conn.sock.settimeout(self.timeout)
                conn.sock.sendall(answer(check))
            except OSError:
                pass
        self._drop(conn)  # answered, closed by the client, or a request too large

    def _drop(self, conn: _Conn) -> None:
        self.conns.pop(conn.sock.fileno(), None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
