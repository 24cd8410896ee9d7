"""The gRPC StateService: Subscribe (snapshot or missing deltas, then deltas; acks come back on
the same stream) and the unary Ack of older agents.

Only the leader serves the stream (`leading`): acks count only where the leader counts them (the
per-policy `membrane.io/enforced` annotation is the leader's), so a standby refuses Subscribe and
Ack with UNAVAILABLE and the trailing metadata `membrane-not-leader: 1`, its health status for
the StateService is NOT_SERVING, and a leader that steps down ends its open streams the same way.
Agents take that as "retry soon on a new connection" (the Service may pick the other replica).
Every replica keeps its own `StateLog` up to date, so a new leader serves at once. The server
is `grpc.aio` on one event loop thread shared by every server of the process: a subscriber is
a suspended coroutine, not a thread, so a thousand agents cost a thousand small tasks. Updates
are sent as the bytes the log encoded at commit (the stream's response serializer is the
identity), so one change is serialized once however many subscribers receive it. A commit
wakes every waiting stream through one future resolved on the loop; a subscriber that falls
out of the bounded delta log gets a snapshot, itself built once per version.

Acks: Subscribe is bidirectional. The first request subscribes, every later one carries
`acked_version`; a small task per stream reads them. That is one small message per ack on an
open stream instead of a unary RPC (a new HTTP/2 stream, a handler coroutine, headers and
trailers) per subscriber per change, which was most of the operator's cost of a change at a
thousand subscribers. The initial metadata `membrane-stream-acks: 1` tells a client it may ack
on the stream; an older client sends one request, half-closes and keeps using `Ack`.

A subscriber that fell behind (several versions waiting when its stream gets to run) and said
it `accepts_batches` gets them as one DELTA message with `base_version`: the committed
messages concatenated (protobuf merges concatenated messages: `changes` append in order, the
last `version` wins) plus the `base_version` field, so batching costs no re-encoding either.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from membrane.api import grpc_limits
from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state_codec import encode_change, snapshot_chunks, update_bytes
from membrane.grpc_standard import StandardServices
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.propagation import PropagationTracker
from membrane.operator.state_log import Codec, StateLog
from membrane.tls.grpc_credentials import peer_name
from membrane.unix_sockets import bind_private, remove_stale

log = logging.getLogger(__name__)

SERVICE = "membrane.state.v1.StateService"
CODEC = Codec(encode_change, update_bytes, snapshot_chunks)
READY_POLL = 0.05  # how often a subscriber that came before the first state checks again
STREAM_ACKS = (("membrane-stream-acks", "1"),)  # initial metadata: acks on the stream welcome
# Trailing metadata of a refusal by a replica that does not lead (the agent's state client
# knows the key: retry soon, on a new connection).
NOT_LEADER = (("membrane-not-leader", "1"),)
NOT_LEADER_REASON = "not the leader: reconnect (the Service picks another replica)"
# A batch stays small: gRPC copies every message into each subscriber's own send buffer, so a
# thousand lagging subscribers hold up to a thousand batches in flight at once.
BATCH_BYTES = 64 << 10
BATCH_CACHE = 32  # recent batches kept: subscribers that lag alike share the bytes


def batch_groups(wires: list[tuple[int, bytes]],
                 limit: int = BATCH_BYTES) -> list[list[tuple[int, bytes]]]:
    """Consecutive encoded deltas grouped into runs of at most about `limit` bytes (a delta
    larger than that is a run of its own)."""
    groups: list[list[tuple[int, bytes]]] = []
    size = 0
    for version, wire in wires:
        if not groups or size + len(wire) > limit:
            groups.append([])
            size = 0
        groups[-1].append((version, wire))
        size += len(wire)
    return groups


def batch_wire(group: list[tuple[int, bytes]]) -> bytes:
    """One DELTA message for a run of consecutive deltas: their messages concatenated, then
    `base_version` (the version before the first)."""
    base = pb.StateUpdate(base_version=group[0][0] - 1).SerializeToString()
    return b"".join(wire for _, wire in group) + base


def batched(wires: list[tuple[int, bytes]], limit: int = BATCH_BYTES) -> list[tuple[int, bytes]]:
    """(last version, message) per run; a run of one delta stays as it was committed."""
    return [group[0] if len(group) == 1 else (group[-1][0], batch_wire(group))
            for group in batch_groups(wires, limit)]


class _LoopThread:
    """One asyncio loop in a daemon thread for every aio server of this process."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="state-grpc-aio",
                                 daemon=True).start()
                cls._loop = loop
            return cls._loop


class Refused(Exception):
    """A call that may not go on: the status code and the reason the client is told."""

    def __init__(self, code: grpc.StatusCode, reason: str, label: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.label = label


class StateServicer:
    """`tls`: every call must come with a client certificate (mutual TLS, checked against the
    CA by gRPC at the handshake) naming the node it subscribes or acks as. `node_known`: a
    subscription or ack for a node with no Node object is refused (None: not checked).
    `leading`: whether this replica leads now; streams and acks are refused while it does not
    (None: always, one operator without election). Call `wake()` (via `leadership_changed`)
    when it changes so open streams notice."""

    def __init__(self, state: StateLog, tracker: PropagationTracker, metrics: OperatorMetrics,
                 ready: Callable[[], bool], tls: bool = False,
                 node_known: Callable[[str], bool] | None = None,
                 leading: Callable[[], bool] | None = None) -> None:
        self.tls = tls
        self.leading = leading or (lambda: True)
        self.node_known = node_known
        self.state = state
        self.tracker = tracker
        self.metrics = metrics
        self.ready = ready  # the first full state is built (before that a snapshot would lie)
        self.stopping = False
        self.loop = _LoopThread.get()
        self._tick: asyncio.Future[None] | None = None  # resolved (and replaced) per commit
        state.use_codec(CODEC)
        state.listeners.append(self._committed)
        self._sent_snapshot = metrics.bytes_sent.labels("snapshot")
        self._sent_delta = metrics.bytes_sent.labels("delta")
        self._batches: dict[tuple[int, int], bytes] = {}  # (first, last version) -> message; loop only

    # --- waking streams -----------------------------------------------------------------------
    def _committed(self) -> None:  # any thread
        self.loop.call_soon_threadsafe(self.wake)

    def leadership_changed(self) -> None:  # any thread
        """Open streams check `leading` again (a replica that stepped down ends them)."""
        self._committed()

    def serving(self) -> bool:
        """What the health service says: the state is built and this replica leads."""
        return self.ready() and self.leading()

    async def _refuse_standby(self, context: aio.ServicerContext[Any, Any]) -> None:
        self.metrics.stream_refused.labels("not_leader").inc()
        await context.abort(grpc.StatusCode.UNAVAILABLE, NOT_LEADER_REASON, NOT_LEADER)

    def wake(self) -> None:  # on the loop
        tick, self._tick = self._tick, None
        if tick is not None and not tick.done():
            tick.set_result(None)

    def _next_tick(self) -> asyncio.Future[None]:
        if self._tick is None:
            self._tick = self.loop.create_future()
        return self._tick

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Subscribe": grpc.stream_stream_rpc_method_handler(
                self.subscribe, request_deserializer=pb.SubscribeRequest.FromString,
                response_serializer=None),  # already bytes
            "Ack": grpc.unary_unary_rpc_method_handler(
                self.ack, request_deserializer=pb.AckRequest.FromString,
                response_serializer=pb.AckResponse.SerializeToString),
        })

    # --- RPCs ---------------------------------------------------------------------------------
    async def subscribe(self, requests: AsyncIterator[pb.SubscribeRequest],
                        context: aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
        incoming = requests.__aiter__()
        try:
            request = await incoming.__anext__()
        except StopAsyncIteration:
            return
        node = request.node_name
        if not node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_name is required")
        try:
            expires = self._authorize(context, node)
        except Refused as refused:
            self.metrics.stream_refused.labels(refused.label).inc()
            await context.abort(refused.code, refused.reason)
        if not self.leading():
            await self._refuse_standby(context)
        await context.send_initial_metadata(STREAM_ACKS)
        while not self.ready():
            if self.stopping:
                return
            await asyncio.sleep(READY_POLL)
        if not self.leading():
            await self._refuse_standby(context)
        if self.node_known is not None and not self.node_known(node):
            self.metrics.stream_refused.labels("unknown_node").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"no Node named {node!r}")
        self.tracker.subscribed(node)
        if request.acked_version and request.stream_id == self.state.stream_id:
            # A reconnect with nothing missed gets no update to ack: what it enforces is known now.
            self.tracker.acked(node, min(request.acked_version, self.state.version), time.monotonic())
        self.metrics.subscribers.inc()
        log.debug("node %s subscribed (last version %d, stream %s)", node,
                  request.last_applied_version, request.stream_id or "-")
        reader = asyncio.ensure_future(self._read_acks(node, incoming))
        try:
            sent = -1
            if request.stream_id == self.state.stream_id:
                sent = request.last_applied_version
            while not self.stopping:
                if not self.leading():
                    await self._refuse_standby(context)  # stepped down: the agent moves on
                tick = self._next_tick()
                wires = self.state.wire_after(sent) if sent >= 0 else None
                if wires is None:
                    version, chunks = self.state.snapshot_wire()
                    self.metrics.snapshots_sent.inc()
                    for chunk in chunks:
                        self._sent_snapshot.inc(len(chunk))
                        yield chunk
                    sent = version
                    continue
                if len(wires) > 1 and request.accepts_batches:
                    wires = self._batched(wires)
                for version, wire in wires:
                    self.metrics.deltas_sent.inc()
                    self._sent_delta.inc(len(wire))
                    yield wire
                    sent = version
                if not wires:
                    if expires is None:
                        # Shielded: the tick is shared by every waiting stream, and awaiting it
                        # bare would cancel it for all of them when this one is cancelled (its
                        # agent left). (asyncio.wait below never cancels what it waits for.)
                        await asyncio.shield(tick)
                        continue
                    # The stream lives as long as the certificate it was opened with: the
                    # client reconnects (resuming, deltas only) with the one it renewed.
                    left = expires - time.time()
                    if left <= 0:
                        self.metrics.stream_refused.labels("expired").inc()
                        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                            "the client certificate expired; reconnect with a renewed one")
                    await asyncio.wait([tick], timeout=left)
        finally:
            reader.cancel()
            self.metrics.subscribers.dec()
            self.tracker.unsubscribed(node, time.monotonic())
            log.debug("node %s unsubscribed", node)

    def _batched(self, wires: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        out = []
        for group in batch_groups(wires):
            if len(group) == 1:
                out.append(group[0])
                continue
            key = (group[0][0], group[-1][0])
            wire = self._batches.get(key)
            if wire is None:
                wire = self._batches[key] = batch_wire(group)
                if len(self._batches) > BATCH_CACHE:
                    del self._batches[next(iter(self._batches))]
            out.append((key[1], wire))
        return out

    async def _read_acks(self, node: str, incoming: AsyncIterator[pb.SubscribeRequest]) -> None:
        """Acks on the stream (every request after the first) until the client half-closes."""
        try:
            async for request in incoming:
                if request.acked_version:
                    self.tracker.acked(node, request.acked_version, time.monotonic())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the call ended; the stream's own loop notices
            log.debug("node %s: reading acks stopped: %s", node, exc)

    def _authorize(self, context: aio.ServicerContext[Any, Any], node: str) -> float | None:
        """When the caller's certificate expires (None: no TLS); Refused unless it names `node`."""
        if not self.tls:
            return None
        peer = peer_name(context)
        if peer is None:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "a client certificate is required",
                          "no_certificate")
        name, expires = peer
        if name != node:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                          f"the certificate names node {name!r}, not {node!r}", "wrong_node")
        return expires

    async def ack(self, request: pb.AckRequest,
                  context: aio.ServicerContext[Any, Any]) -> pb.AckResponse:
        try:
            self._authorize(context, request.node_name)
            if self.node_known is not None and not self.node_known(request.node_name):
                raise Refused(grpc.StatusCode.PERMISSION_DENIED,
                              f"no Node named {request.node_name!r}", "unknown_node")
        except Refused as refused:
            self.metrics.stream_refused.labels(refused.label).inc()
            await context.abort(refused.code, refused.reason)
        if not self.leading():
            await self._refuse_standby(context)
        if request.stream_id and request.stream_id != self.state.stream_id:
            return pb.AckResponse()  # an ack for another operator's history measures nothing
        self.tracker.acked(request.node_name, request.version, time.monotonic())
        return pb.AckResponse()


class AsyncServer:
    """A started `grpc.aio` server on the shared loop, driven from synchronous code.

    Besides the StateService it answers gRPC health checks (the StateService is SERVING while
    the first full state is built and this replica leads, NOT_SERVING otherwise and once the
    server stops) and server reflection (`membrane.grpc_standard`).
    """

    def __init__(self, servicer: StateServicer, address: str,
                 credentials: grpc.ServerCredentials | None = None) -> None:
        self.servicer = servicer
        self.credentials = credentials
        self.loop = servicer.loop
        self.server: aio.Server | None = None
        self.standard: StandardServices | None = None
        self._readiness: asyncio.Task[None] | None = None
        self.unix_path: Path | None = None
        self.port = asyncio.run_coroutine_threadsafe(self._start(address), self.loop).result(30)

    async def _start(self, address: str) -> int:
        limits = grpc_limits.OPERATOR
        server = aio.server(options=limits.server_options(),
                            maximum_concurrent_rpcs=limits.rpcs_in_flight)
        server.add_generic_rpc_handlers((self.servicer.handler(),))
        self.standard = StandardServices(server, [SERVICE], self.loop, serving=False)
        await self.standard.start_async()
        if address.startswith("unix:"):
            # 0600 from the start, whatever the umask (the socket is the whole cluster's state).
            self.unix_path = Path(address.removeprefix("unix:").removeprefix("//"))
            remove_stale(self.unix_path, "another operator")
            port = bind_private(self.unix_path, lambda tmp: self._listen(server, f"unix:{tmp}"))
        else:
            port = self._listen(server, address)
            if port == 0:
                raise OSError(f"cannot listen on {address}")
        await server.start()
        self.server = server
        self._readiness = asyncio.ensure_future(self._report_ready())
        return port

    def _listen(self, server: aio.Server, address: str) -> int:
        if self.credentials is None:
            return int(server.add_insecure_port(address))
        return int(server.add_secure_port(address, self.credentials))

    async def _report_ready(self) -> None:
        """SERVING while the servicer serves (built and leading), polled: leadership comes and
        goes for the life of the server."""
        assert self.standard is not None
        serving = False
        while True:
            now = self.servicer.serving()
            if now != serving:
                serving = now
                await self.standard.set_serving_async(serving)
            await asyncio.sleep(READY_POLL)

    async def _stop(self, grace: float) -> None:
        if self._readiness is not None:
            self._readiness.cancel()
        if self.standard is not None:
            await self.standard.shutting_down_async()
        self.servicer.wake()  # streams waiting for a commit see `stopping` and end
        if self.server is not None:
            await self.server.stop(grace)

    def stop(self, grace: float = 1.0) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(grace), self.loop).result(grace + 10)
        if self.unix_path is not None:
            self.unix_path.unlink(missing_ok=True)


def serve(servicer: StateServicer, address: str, max_workers: int | None = None,
          credentials: grpc.ServerCredentials | None = None) -> tuple[AsyncServer, int]:
    """Start a server on `address` (`host:port`, port 0 picks one, or `unix:/path`); returns
    the server and the bound port (0 for unix sockets). `max_workers` is accepted for
    compatibility: streams are coroutines, there is no worker pool to size."""
    server = AsyncServer(servicer, address, credentials)
    return server, server.port


def stop(server: AsyncServer, servicer: StateServicer, grace: float = 1.0) -> None:
    servicer.stopping = True
    server.stop(grace)
