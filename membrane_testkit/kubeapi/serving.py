"""The HTTP front (stdlib ThreadingHTTPServer on 127.0.0.1) and `KubeApiServer`, its test-facing API:
start/stop/restart, persistence, compaction, closing watches, injected errors and request counters.
"""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from ..waiting import WaitTimeout, wait_for
from .handling import Api
from .messages import Request, Response, User
from .resources import DEFAULT_KUBERNETES_VERSION, Registry
from .statuses import ApiError, status_body
from .storing import Store
from .validating import check_version, schema_book
from .watching import WatchSpec, run_watch

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost")
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass
class RequestRecord:
    """One request the server received (`code` is filled in once answered)."""

    method: str
    target: str  # path and query, as sent
    path: str
    query: dict[str, str]
    code: int = 0
    user: str | None = None  # the bearer token's user; None: no token (the admin)


@dataclass
class ErrorRule:
    """Answer the next `count` requests whose method and target match with an error."""

    pattern: str
    code: int
    count: int
    method: str | None = None
    message: str = "injected failure"
    retry_after: int | None = None
    hits: int = 0
    _regex: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._regex = re.compile(self.pattern)

    def matches(self, method: str, target: str) -> bool:
        """Whether this rule applies to a request (and still has uses left)."""
        return self.count > 0 and (self.method is None or self.method == method) and bool(self._regex.search(target))


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: KubeApiServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.stopping = False
        self.conn_lock = threading.Lock()
        super().__init__(address, _Handler)

    def drop_connections(self) -> None:
        with self.conn_lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.conn_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.conn_lock:
            self.server.connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("kubeapi %s " + format, self.address_string(), *args)  # noqa: G003 - `format` is http.server's own %-format string

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _dispatch(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        record = owner._record(self.command, self.path, url.path, query)
        rule = owner._take_rule(self.command, self.path)
        try:
            user = owner._authenticate(self.headers.get("Authorization"))
            record.user = user.name if user is not None else None
            if rule is not None:
                headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else None
                raise ApiError(rule.code, rule.message, headers=headers)
            result = owner.api.handle(Request(self.command, url.path, query,
                                              self.headers.get("Content-Type", "application/json"), body,
                                              user))
        except ApiError as error:
            record.code = error.code
            self._send(error.code, error.body, error.headers)
            return
        except Exception as exc:
            log.exception("kubeapi: %s %s failed", self.command, self.path)
            record.code = 500
            self._send(500, status_body(500, f"internal error: {exc}", "InternalError"))
            return
        record.code = 200 if isinstance(result, WatchSpec) else result.code
        if isinstance(result, Response):
            self._send(result.code, result.body, result.headers)
        else:
            self._stream(result)

    def _alive(self) -> bool:
        try:
            readable, _w, _x = select.select([self.connection], [], [], 0)
            return not readable or self.connection.recv(1, socket.MSG_PEEK) != b""
        except OSError:
            return False

    def _stream(self, spec: WatchSpec) -> None:
        owner = self.server.owner
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write(line: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()

        with owner._watch_lock:
            owner._open_watches += 1
            owner._watches_started += 1
        try:
            ended = run_watch(owner.store, spec, write, self._alive, lambda: self.server.stopping,
                              owner.bookmark_interval)
            if ended in ("abrupt", "disconnected"):
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        finally:
            with owner._watch_lock:
                owner._open_watches -= 1


class KubeApiServer:
    """An in-memory Kubernetes API server on 127.0.0.1 for tests, e2e runs and benchmarks.

    Use as a context manager or call start()/stop(). `port=0` picks a free port at the first start;
    restart() binds the same port again and keeps every object (and, in process, the history).
    With `state_file`, objects are written there on every change (or only on stop when
    `sync_writes=False`) and loaded at start, so a new process continues where the last one ended.

    `kubernetes_version` (`"1.26"` to `"1.37"`) is the version it pretends to be: `/version`,
    the resources it serves (networkpolicies/status up to 1.27 only) and the OpenAPI schemas
    every write of a built-in type is checked against (`validating`; `validate_schemas=False`
    turns that off, for benchmarks that measure the clients rather than the server).
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", state_file: str | Path | None = None,
                 history_limit: int = 10_000, bookmark_interval: float = 60.0, max_watch_seconds: float = 1800.0,
                 sync_writes: bool = True, kubernetes_version: str = DEFAULT_KUBERNETES_VERSION,
                 validate_schemas: bool = True) -> None:
        if host not in LOOPBACK:
            raise ValueError(f"kubeapi listens on loopback only, not {host!r}")
        self.host = "127.0.0.1"
        self.port = port
        self.state_file = Path(state_file) if state_file is not None else None
        self.bookmark_interval = bookmark_interval
        self.sync_writes = sync_writes
        self.kubernetes_version = check_version(kubernetes_version)
        self.store = Store(history_limit=history_limit)
        self.registry = Registry(self.kubernetes_version)
        self.api = Api(self.store, self.registry, lambda: f"{self.host}:{self.port}", max_watch_seconds,
                       schema_book(self.kubernetes_version) if validate_schemas else None)
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._open_watches = 0
        self._watches_started = 0
        self._rules: list[ErrorRule] = []
        self._tokens: dict[str, User] = {}
        self._requests: list[RequestRecord] = []
        self._loaded = False

    # --- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:34567`."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is accepting connections."""
        return self._server is not None

    def start(self) -> KubeApiServer:
        """Bind and serve in a background thread (loading `state_file` the first time)."""
        if self._server is not None:
            return self
        if not self._loaded:
            self._loaded = True
            if not (self.state_file is not None and self.store.load_file(self.state_file)):
                for name in DEFAULT_NAMESPACES:
                    self.api.handle(Request("POST", "/api/v1/namespaces", {},
                                            body=json.dumps({"metadata": {"name": name}}).encode()))
            for _key, crd in self.store.items("apiextensions.k8s.io", "customresourcedefinitions"):
                self.registry.set_crd(crd)
            if self.state_file is not None and self.sync_writes:
                state_file = self.state_file
                self.store.on_commit = lambda: self.store.save_file(state_file)
        server = _HTTPServer((self.host, self.port), self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"kubeapi:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, end watches and drop every connection; objects stay in memory."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stopping = True
        with self.store.cond:
            self.store.cond.notify_all()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.state_file is not None:
            self.store.save_file(self.state_file)

    def restart(self, downtime: float = 0.0) -> None:
        """stop(), wait `downtime` seconds, start() on the same port."""
        self.stop()
        if downtime:
            time.sleep(downtime)
        self.start()

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- hooks -------------------------------------------------------------------------------
    @property
    def resource_version(self) -> int:
        """The current global resourceVersion."""
        return self.store.rv

    def compact(self, rv: int | None = None) -> int:
        """Forget change history up to `rv` (default: now); watches and exact lists from older versions get 410."""
        return self.store.compact(rv)

    def close_watches(self, abrupt: bool = False) -> None:
        """End every open watch: cleanly (like a server-side timeout) or abruptly (connection dropped)."""
        self.store.close_watches(abrupt)

    @property
    def open_watches(self) -> int:
        """How many watch streams are open."""
        with self._watch_lock:
            return self._open_watches

    @property
    def watches_started(self) -> int:
        """How many watch streams were ever opened (a re-watch after a close counts again)."""
        with self._watch_lock:
            return self._watches_started

    def wait_for_watches(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least `count` watch streams are open."""
        try:
            return wait_for(lambda: self.open_watches >= count, timeout, 0.01, f"{count} open watches")
        except WaitTimeout:
            return False

    def inject_error(self, pattern: str = "", code: int = 500, count: int = 1, method: str | None = None,
                     message: str | None = None, retry_after: int | None = None) -> ErrorRule:
        """Answer the next `count` requests whose `METHOD` matches and whose path+query matches the regex
        `pattern` with a `code` Status (429 also sends Retry-After when given)."""
        rule = ErrorRule(pattern, code, count, method, message or f"injected failure ({code})", retry_after)
        with self._lock:
            self._rules.append(rule)
        return rule

    def add_token(self, token: str, user: User) -> None:
        """Requests with `Authorization: Bearer <token>` are `user` (recorded on the CSRs it
        creates, as the real API server does); an unknown token gets 401; no token is the admin."""
        with self._lock:
            self._tokens[token] = user

    def _authenticate(self, header: str | None) -> User | None:
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        with self._lock:
            user = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return user

    def clear_errors(self) -> None:
        """Drop all injected error rules."""
        with self._lock:
            self._rules.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request received since start or reset_requests(), oldest first."""
        with self._lock:
            return list(self._requests)

    def request_count(self, pattern: str = "", method: str | None = None, code: int | None = None) -> int:
        """How many received requests match a method, a regex over path+query and an answer code."""
        regex = re.compile(pattern)
        return sum(1 for r in self.requests if (method is None or r.method == method)
                   and (code is None or r.code == code) and regex.search(r.target))

    def reset_requests(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self._requests.clear()

    def _record(self, method: str, target: str, path: str, query: dict[str, str]) -> RequestRecord:
        record = RequestRecord(method, target, path, query)
        with self._lock:
            self._requests.append(record)
        return record

    def _take_rule(self, method: str, target: str) -> ErrorRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, target):
                    rule.count -= 1
                    rule.hits += 1
                    return rule
        return None

    # --- clients -----------------------------------------------------------------------------
    def configuration(self) -> Configuration:
        """A `kubernetes.client.Configuration` for this server."""
        from .clients import make_configuration

        return make_configuration(self.url)

    def api_client(self) -> ApiClient:
        """A `kubernetes.client.ApiClient` for this server (close it when done)."""
        from .clients import make_api_client

        return make_api_client(self.url)
