"""The gRPC Observer server (the only observing module that imports grpc).

Serves `membrane.observer.v1.Observer`, with gRPC health checking and reflection, on a unix
socket (mode 0600, like the agent API socket: flows show who talks to whom) and optionally on
a TCP address. Every call is translated into the pure `FlowObserver.stream()`/`status()`;
nothing here decides which flows match.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path

import grpc

from membrane.api import grpc_limits
from membrane.api.observer.v1 import observer_pb2 as pb
from membrane.api.observer.v1 import observer_pb2_grpc as pb_grpc
from membrane.api.observer_codec import (
    UnknownEnumInFilter,
    filter_from_pb,
    flow_to_pb,
    request_times,
    timestamp,
)
from membrane.flows import FilterError, compile_filters
from membrane.grpc_standard import StandardServices
from membrane.tls.grpc_credentials import server_credentials
from membrane.tls.material import Material
from membrane.unix_sockets import bind_private, remove_stale

from .observer import FlowObserver, FlowQuery, Lost

log = logging.getLogger("membrane.agent.observer")


class ObserverServicer(pb_grpc.ObserverServicer):
    def __init__(self, observer: FlowObserver) -> None:
        self.observer = observer

    def GetFlows(self, request: pb.GetFlowsRequest, context: grpc.ServicerContext) -> Iterator[pb.GetFlowsResponse]:
        try:
            allow = [filter_from_pb(f) for f in request.whitelist]
            deny = [filter_from_pb(f) for f in request.blacklist]
            compile_filters(allow, deny)  # reject bad selectors/CIDRs before streaming anything
        except (FilterError, UnknownEnumInFilter, ValueError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        since, until = request_times(request)
        query = FlowQuery(number=request.number, follow=request.follow, since=since, until=until,
                          allow=allow, deny=deny)
        node = self.observer.node
        for item in self.observer.stream_batches(query, is_active=context.is_active):
            if isinstance(item, Lost):
                yield pb.GetFlowsResponse(time=timestamp(datetime.now(UTC)), node_name=node,
                                          lost_events=pb.LostEvents(count=item.count))
            elif request.batch:
                msgs = [flow_to_pb(f) for f in item]
                yield pb.GetFlowsResponse(time=msgs[-1].time, node_name=node, flows=pb.FlowBatch(flows=msgs))
            else:
                for flow in item:
                    msg = flow_to_pb(flow)
                    yield pb.GetFlowsResponse(time=msg.time, node_name=node, flow=msg)

    def ServerStatus(self, request: pb.ServerStatusRequest, context: grpc.ServicerContext) -> pb.ServerStatusResponse:
        st = self.observer.status()
        return pb.ServerStatusResponse(num_flows=st.held, max_flows=st.capacity, seen_flows=st.seen,
                                       lost_events=st.lost, lost_events_by_reason=st.lost_by_reason,
                                       uptime_ns=int(st.uptime_s * 1e9), node_name=st.node)


class ObserverServer:
    """`ObserverServer(observer, Path("/run/membrane/agent.observer.sock"), tcp="127.0.0.1:4245")`."""

    def __init__(self, observer: FlowObserver, unix_path: Path | None, tcp: str | None = None,
                 max_workers: int = grpc_limits.OBSERVER_WORKERS,
                 tls: Callable[[], Material] | None = None) -> None:
        if unix_path is None and tcp is None:
            raise ValueError("the observer needs a unix socket or a TCP address")
        self.observer = observer
        self.unix_path = unix_path
        # Each follower holds a worker thread for its stream's lifetime: max_workers bounds them.
        # Calls beyond the pool are refused (RESOURCE_EXHAUSTED), not queued behind followers.
        limits = grpc_limits.OBSERVER
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="observer"),
                                   options=[("grpc.so_reuseport", 0), *limits.server_options()],
                                   maximum_concurrent_rpcs=max_workers)
        pb_grpc.add_ObserverServicer_to_server(ObserverServicer(observer), self._server)
        # Health checking and reflection, so grpcurl and grpc_health_probe work against it.
        self.standard = StandardServices(self._server, [pb.DESCRIPTOR.services_by_name["Observer"].full_name])
        self.tcp_port: int | None = None
        if unix_path is not None:
            remove_stale(unix_path)
            # 0600 from the first instant (flows show who talks to whom), whatever the umask.
            bind_private(unix_path, lambda tmp: self._server.add_insecure_port(f"unix://{tmp}"))
        if tcp is not None:
            # TCP is mutual TLS (this node's certificate; clients need one from the cluster CA).
            self.tcp_port = self._server.add_insecure_port(tcp) if tls is None else \
                self._server.add_secure_port(tcp, server_credentials(tls))
            if not self.tcp_port:
                raise OSError(f"observer cannot listen on {tcp}")

    def start(self) -> None:
        self.standard.start()
        self._server.start()
        log.info("observer serving", extra={"fields": {"unix": str(self.unix_path), "tcp_port": self.tcp_port}})

    def stop(self, grace: float = 1.0) -> None:
        self.standard.shutting_down()
        self.observer.ring.wake_all()  # followers notice cancellation at once
        self._server.stop(grace).wait(grace + 1)
        if self.unix_path is not None:
            try:
                self.unix_path.unlink()
            except FileNotFoundError:
                pass
