"""HTTP endpoints for kubelet probes and Prometheus: /healthz, /readyz, /metrics.

Shared by the agent and the operator (each with its own registry); the only place the
Prometheus exposition is served from.

Clients cannot exhaust it: one event-loop thread reads every connection (a silent or slow
client costs a socket, never a thread), each request head must arrive within a deadline and
each answer must be taken within another, at most `max_connections` are open at once (a new
one pushes out the oldest that has not finished sending its request, so a flood of half-open
connections cannot lock kubelet's probe out), and the answers are computed on a small fixed
pool of worker threads.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

MAX_CONNECTIONS = 128
WORKERS = 2
READ_DEADLINE = 5.0   # seconds for the whole request head, however slowly it trickles in
WRITE_DEADLINE = 10.0  # seconds for the client to take the whole answer
MAX_HEAD = 8 * 1024   # bytes of request line + headers

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class _Connection:
    """One open client connection; `reading` until its request head is complete."""

    __slots__ = ("task", "writer", "reading")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.task: asyncio.Task[None] | None = None
        self.reading = True


class HttpServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, is_live: Callable[[], bool],
                 is_ready: Callable[[], bool], name: str = "http", max_connections: int = MAX_CONNECTIONS,
                 workers: int = WORKERS, read_deadline: float = READ_DEADLINE,
                 write_deadline: float = WRITE_DEADLINE) -> None:
        self._registry, self._is_live, self._is_ready = registry, is_live, is_ready
        self.max_connections, self.read_deadline, self.write_deadline = max_connections, read_deadline, write_deadline
        # Bound here so the port is known (and a clash reported) before start().
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=128)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"{name}-worker")
        self._connections: dict[asyncio.StreamWriter, _Connection] = {}
        self.evicted = 0  # connections pushed out by the cap (for tests and the curious)
        self._loop = asyncio.new_event_loop()
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive() and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(5)
        else:
            self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._accepted, sock=self._sock, limit=MAX_HEAD)
        async with server:
            await self._stopped.wait()
            server.close()
            for conn in list(self._connections.values()):
                if conn.task is not None:
                    conn.task.cancel()
            await asyncio.sleep(0)

    # --- one connection --------------------------------------------------------------------
    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections and not self._evict_one():
            writer.transport.abort()  # every slot is computing an answer: refuse, do not queue
            return
        conn = _Connection(writer)
        conn.task = asyncio.current_task()
        self._connections[writer] = conn
        try:
            await self._serve_one(conn, reader, writer)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self._connections.pop(writer, None)
            writer.transport.abort()  # no lingering close handshake with a client that stalls

    def _evict_one(self) -> bool:
        """Push out the oldest connection still sending its request head (dicts keep order)."""
        for conn in self._connections.values():
            if conn.reading and conn.task is not None:
                self._connections.pop(conn.writer, None)
                conn.task.cancel()
                self.evicted += 1
                return True
        return False

    async def _serve_one(self, conn: _Connection, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.read_deadline):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            await self._reply(writer, 408, b"request head not received in time\n")
            return
        except asyncio.LimitOverrunError:
            await self._reply(writer, 431, b"request head too large\n")
            return
        except asyncio.IncompleteReadError:
            return  # the client hung up before finishing its request
        conn.reading = False
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            await self._reply(writer, 400, b"bad request line\n")
            return
        method, target = parts[0], parts[1].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            await self._reply(writer, 405, b"only GET and HEAD\n")
            return
        accept = _header(head, b"accept")
        code, body, ctype = await asyncio.get_running_loop().run_in_executor(self._pool, self._answer, target,
                                                                             accept)
        await self._reply(writer, code, b"" if method == b"HEAD" else body, ctype, length=len(body))

    def _answer(self, target: str, accept: str = "") -> tuple[int, bytes, str]:
        """Runs on a worker thread: the probes and the exposition may take a while."""
        path = target.split("?", 1)[0]
        if path == "/metrics":
            # OpenMetrics for a scraper that asks for it (Accept: application/openmetrics-text),
            # the Prometheus text format otherwise.
            encode, content_type = choose_encoder(accept)
            return 200, encode(self._registry), content_type
        if path == "/healthz":
            ok = self._is_live()
            return (200, b"ok\n", "text/plain") if ok else (503, b"unhealthy\n", "text/plain")
        if path == "/readyz":
            ok = self._is_ready()
            return (200, b"ready\n", "text/plain") if ok else (503, b"not ready\n", "text/plain")
        return 404, b"not found\n", "text/plain"

    async def _reply(self, writer: asyncio.StreamWriter, code: int, body: bytes, ctype: str = "text/plain",
                     length: int | None = None) -> None:
        head = (f"HTTP/1.1 {code} {_REASONS.get(code, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("latin-1") + body)
        try:
            async with asyncio.timeout(self.write_deadline):
                await writer.drain()
        except TimeoutError:
            pass  # a client that does not read its answer loses it


def _header(head: bytes, name: bytes) -> str:
    """The value of one request header (lower-case `name`; the last one wins), or ""."""
    value = b""
    for line in head.split(b"\r\n")[1:]:
        key, sep, rest = line.partition(b":")
        if sep and key.strip().lower() == name:
            value = rest.strip()
    return value.decode("latin-1")
