"""The gRPC StateService: Subscribe (snapshot or missing deltas, then deltas) and Ack.

Every replica serves the stream from its own `StateLog`; agents may connect to any. A handler
thread per subscriber waits on the log's condition variable, so a commit reaches every open
stream at once; a subscriber that falls out of the bounded delta log gets a fresh snapshot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state.v1 import state_pb2_grpc as pb_grpc
from membrane.api.state_codec import delta_message, snapshot_messages
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.propagation import PropagationTracker
from membrane.operator.state_log import StateLog

log = logging.getLogger(__name__)

# How often a waiting handler wakes to notice a cancelled call or a stopping server.
POLL = 0.5


class StateServicer(pb_grpc.StateServiceServicer):
    def __init__(self, state: StateLog, tracker: PropagationTracker, metrics: OperatorMetrics,
                 ready: Callable[[], bool]) -> None:
        self.state = state
        self.tracker = tracker
        self.metrics = metrics
        self.ready = ready  # the first full state is built (before that a snapshot would lie)
        self.stopping = False

    def Subscribe(self, request: pb.SubscribeRequest,  # noqa: N802 - gRPC naming
                  context: grpc.ServicerContext) -> Iterator[pb.StateUpdate]:
        node = request.node_name
        if not node:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_name is required")
        while not self.ready():
            if self.stopping or not context.is_active():
                return
            time.sleep(0.05)
        self.tracker.subscribed(node)
        self.metrics.subscribers.inc()
        log.info("node %s subscribed (last version %d, stream %s)", node,
                 request.last_applied_version, request.stream_id or "-")
        try:
            sent = -1
            if request.stream_id == self.state.stream_id:
                sent = request.last_applied_version
            while not self.stopping and context.is_active():
                deltas = self.state.deltas_after(sent) if sent >= 0 else None
                if deltas is None:
                    version, objects = self.state.snapshot()
                    self.metrics.snapshots_sent.inc()
                    yield from snapshot_messages(version, self.state.stream_id, objects)
                    sent = version
                    continue
                for delta in deltas:
                    self.metrics.deltas_sent.inc()
                    yield delta_message(delta.version, self.state.stream_id, delta.changes)
                    sent = delta.version
                self.state.wait_newer(sent, POLL)
        finally:
            self.metrics.subscribers.dec()
            self.tracker.unsubscribed(node, time.monotonic())
            log.info("node %s unsubscribed", node)

    def Ack(self, request: pb.AckRequest,  # noqa: N802 - gRPC naming
            context: grpc.ServicerContext) -> pb.AckResponse:
        if request.stream_id and request.stream_id != self.state.stream_id:
            return pb.AckResponse()  # an ack for another operator's history measures nothing
        self.tracker.acked(request.node_name, request.version, time.monotonic())
        return pb.AckResponse()


def serve(servicer: StateServicer, address: str, max_workers: int = 64) -> tuple[grpc.Server, int]:
    """Start a server on `address` (`host:port`, port 0 picks one, or `unix:/path`); returns
    the server and the bound port (0 for unix sockets). One worker per open stream: size
    `max_workers` above the node count."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers,
                                                    thread_name_prefix="state-grpc"))
    pb_grpc.add_StateServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port(address)
    if port == 0 and not address.startswith("unix:"):
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port


def stop(server: grpc.Server, servicer: StateServicer, grace: float = 1.0) -> None:
    servicer.stopping = True
    server.stop(grace).wait(grace + 1)
