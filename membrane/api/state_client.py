"""`StateClient`: the agent's end of the operator's state stream (gRPC).

Subscribes with the last version it applied (and the stream id that version belongs to), so a
reconnect to the same operator gets only the missing deltas and anything else gets a snapshot.
Each complete update goes to `apply`; once `apply` returns, the version is acked (that is what
the operator's propagation histogram measures) and becomes the resume point. `apply` may
return the version it enforces instead (lower when the agent could not enforce this update,
e.g. a map would overflow): that is what gets acked, so the operator never counts a node as
enforcing what it does not. Connection
failures reconnect with exponential backoff and jitter; the backoff resets after an update.

Acks go on the Subscribe stream itself when the operator says it takes them (initial metadata
`membrane-stream-acks`), coalesced: the request sender takes the newest applied version
waiting, so a burst of updates costs one ack. Against an older operator (no such metadata) the
client acks with the unary `Ack` RPC as before.

A client that lagged may get several versions in one delta (`StateUpdate.base_version` below
`version - 1`); `apply` must take such an update as one step from `base_version` to `version`.

Only the operator that leads serves the stream (its acks are the ones that count). A standby
replica refuses with UNAVAILABLE and the trailing metadata `membrane-not-leader`; the client
then closes its channel (a new connection lets the Service pick another replica) and retries
after a short jittered delay of its own (`standby_backoff`: a refusal is no outage, so the
connection backoff does not grow), keeping what it applied and its resume point.

An agent that persists its applied state can persist `last_version` and `stream_id` with it
and pass them back in after a restart to resume without a snapshot.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator

import grpc

from membrane.api import grpc_limits
from membrane.api.backoff import Backoff
from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state.v1 import state_pb2_grpc as pb_grpc
from membrane.api.state_codec import change_from_pb
from membrane.api.state_objects import StateUpdate
from membrane.tls.certificates import OPERATOR_NAME
from membrane.tls.material import Material

log = logging.getLogger(__name__)

STREAM_ACKS_KEY = "membrane-stream-acks"  # initial metadata of an operator that takes stream acks
NOT_LEADER_KEY = "membrane-not-leader"  # trailing metadata of a refusal by a standby replica


def refused_as_standby(exc: grpc.RpcError) -> bool:
    """The call was refused by an operator replica that does not lead (retry soon, elsewhere)."""
    code = getattr(exc, "code", None)
    trailing = getattr(exc, "trailing_metadata", None)
    if code is None or trailing is None or code() != grpc.StatusCode.UNAVAILABLE:
        return False
    return any(key == NOT_LEADER_KEY for key, _ in trailing() or ())


class StateClient:
    def __init__(self, target: str, node_name: str, apply: Callable[[StateUpdate], int | None],
                 last_version: int = 0, stream_id: str = "",
                 backoff: Backoff | None = None, ack: bool = True,
                 tls: Callable[[], Material] | None = None,
                 server_name: str = OPERATOR_NAME) -> None:
        self.target = target
        # Mutual TLS: the newest material at each (re)connect; a renewed certificate is used
        # from the next connection on, the stream that is up keeps going.
        self.tls = tls
        self.server_name = server_name
        self._generation: int | None = None
        self.node_name = node_name
        self.apply = apply
        self.last_version = last_version
        self.stream_id = stream_id
        self.backoff = backoff or Backoff(initial=0.1, maximum=10.0)
        # After a standby's refusal: short and jittered (agents that all landed on the standby
        # do not come back in step), capped low (the leader is up, a new connection finds it).
        self.standby_backoff = Backoff(initial=0.05, maximum=0.5)
        self.standby_refusals = 0  # (for tests and metrics)
        self.auto_ack = ack
        self.connects = 0  # subscriptions started (for tests and metrics)
        self.acked_version = 0  # newest version acked in `stream_id` (sent again when resubscribing)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._call: grpc.Future | None = None
        self._channel: grpc.Channel | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"state-client:{self.node_name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Subscribe until stopped, reconnecting with backoff."""
        while not self._stop.is_set():
            delay: float | None = None
            try:
                self.subscribe_once()
            except grpc.RpcError as exc:
                if self._stop.is_set():
                    break
                if refused_as_standby(exc):
                    self.standby_refusals += 1
                    self._drop_channel()  # a new connection: the Service may pick the leader
                    delay = self.standby_backoff.next()
                    log.debug("state stream: %s is not the leader; retrying in %.2fs",
                              self.target, delay)
                else:
                    log.info("state stream from %s ended: %s", self.target,
                             exc.code() if hasattr(exc, "code") else exc)
            except Exception:
                log.exception("state stream: applying an update failed; resubscribing")
            finally:
                self.connected.clear()
            if not self._stop.is_set():
                self._stop.wait(self.backoff.next() if delay is None else delay)

    def _drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # --- one subscription ---------------------------------------------------------------------
    def _ensure_channel(self) -> grpc.Channel:
        if self._channel is None:
            options = grpc_limits.OPERATOR.client_options()
            if self.tls is None:
                self._channel = grpc.insecure_channel(self.target, options=options)
            else:
                from membrane.tls.grpc_credentials import channel_credentials, channel_options

                material = self.tls()
                self._generation = material.generation
                self._channel = grpc.secure_channel(
                    self.target, channel_credentials(material),
                    options=[*options, *channel_options(self.server_name)])
        return self._channel

    def subscribe_once(self) -> None:
        if self.tls is not None and self._channel is not None \
                and self.tls().generation != self._generation:
            self._channel.close()  # no stream is open on it now: reconnect with the new certificate
            self._channel = None
        stub = pb_grpc.StateServiceStub(self._ensure_channel())
        request = pb.SubscribeRequest(node_name=self.node_name,
                                      last_applied_version=self.last_version,
                                      stream_id=self.stream_id, accepts_batches=True,
                                      acked_version=self.acked_version if self.stream_id else 0)
        acks: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        call = stub.Subscribe(_requests(request, acks))
        self._call = call
        self.connects += 1
        self.connected.set()
        pending: StateUpdate | None = None  # a snapshot arriving in several chunks
        stream_acks: bool | None = None  # known once the initial metadata is in
        try:
            for message in call:
                changes = [change_from_pb(c) for c in message.changes]
                snapshot = message.type == pb.StateUpdate.TYPE_SNAPSHOT
                if pending is not None and (not snapshot or message.version != pending.version):
                    raise ValueError("snapshot interrupted by another update")
                if snapshot and pending is None:
                    pending = StateUpdate(message.version, message.stream_id, True, [])
                if pending is not None:
                    pending.changes.extend(changes)
                    if message.more:
                        continue
                    update, pending = pending, None
                else:
                    update = StateUpdate(message.version, message.stream_id, False, changes,
                                         message.base_version or message.version - 1)
                enforced = self.apply(update)
                ack_version = update.version if enforced is None else min(enforced, update.version)
                if update.stream_id != self.stream_id:
                    self.acked_version = 0
                self.last_version, self.stream_id = update.version, update.stream_id
                self.acked_version = max(self.acked_version, ack_version)
                self.backoff.reset()
                self.standby_backoff.reset()
                if self.auto_ack and ack_version > 0:
                    if stream_acks is None:
                        stream_acks = any(key == STREAM_ACKS_KEY
                                          for key, _ in call.initial_metadata() or ())
                    if stream_acks:
                        acks.put(ack_version)
                        continue
                    try:
                        self.ack(ack_version)
                    except grpc.RpcError as exc:  # the next ack covers this version too
                        log.info("state ack %d failed: %s", ack_version, exc)
        finally:
            acks.put(None)  # ends the request stream
            call.cancel()  # no-op when it already ended; else (apply failed) the server lets go
            self._call = None
            if self._stop.is_set() and self._channel is not None:
                self._channel.close()
                self._channel = None

    def ack(self, version: int) -> None:
        """The unary ack (older operators; the stream carries acks otherwise)."""
        stub = pb_grpc.StateServiceStub(self._ensure_channel())
        stub.Ack(pb.AckRequest(node_name=self.node_name, version=version,
                               stream_id=self.stream_id), timeout=5)


def _requests(first: pb.SubscribeRequest, acks: queue.SimpleQueue[int | None]
              ) -> Iterator[pb.SubscribeRequest]:
    """The Subscribe request stream: the subscription, then acks, each for the newest version
    applied by the time it is sent (older ones queued behind it are covered by it)."""
    yield first
    while True:
        version = acks.get()
        if version is None:
            return
        try:
            while True:
                newer = acks.get_nowait()
                if newer is None:
                    return  # the stream is over: nobody reads this ack
                version = max(version, newer)
        except queue.Empty:
            pass
        yield pb.SubscribeRequest(acked_version=version)
