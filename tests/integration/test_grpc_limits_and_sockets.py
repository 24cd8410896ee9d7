"""Unix sockets are 0600 from the first instant whatever the umask (operator, observer, agent
API), and the gRPC servers bound what a client may send and how many calls it may hold."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from membrane.agent.api_serving import ApiServer
from membrane.agent.observing import FlowObserver, ObserverServer, StaticDirectory
from membrane.api import grpc_limits
from membrane.api.observer.v1 import observer_pb2 as opb
from membrane.api.observer.v1 import observer_pb2_grpc as opb_grpc
from membrane.api.state.v1 import state_pb2 as pb
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.propagation import PropagationTracker
from membrane.operator.state_log import StateLog
from membrane.operator.state_serving import SERVICE, StateServicer, serve, stop
from membrane.unix_sockets import bind_private
from membrane_testkit.waiting import wait_for


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0)  # a umask that would make every new socket world-writable
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    return stat.S_IMODE(st.st_mode)


def test_bind_private_leaves_only_the_final_socket(tmp_path: Path, loose_umask: None) -> None:
    import socket

    sock = socket.socket(socket.AF_UNIX)
    seen: list[int] = []

    def bind(tmp: str) -> int:
        sock.bind(tmp)
        seen.append(stat.S_IMODE(os.stat(Path(tmp).parent).st_mode))
        return 7

    try:
        assert bind_private(tmp_path / "s.sock", bind) == 7
        assert seen == [0o700]  # bound where nobody else can reach
        assert mode(tmp_path / "s.sock") == 0o600
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sock"]
    finally:
        sock.close()


def test_operator_unix_socket_is_0600(tmp_path: Path, loose_umask: None) -> None:
    servicer = StateServicer(StateLog(10), PropagationTracker(lambda _s: None), OperatorMetrics(),
                             ready=lambda: True)
    path = tmp_path / "operator.sock"
    server, _port = serve(servicer, f"unix:{path}")
    try:
        assert mode(path) == 0o600
        assert [p.name for p in tmp_path.iterdir()] == ["operator.sock"]
        with grpc.insecure_channel(f"unix://{path}") as channel:  # and it serves there
            call = channel.unary_unary(f"/{SERVICE}/Ack", request_serializer=pb.AckRequest.SerializeToString,
                                       response_deserializer=pb.AckResponse.FromString)
            call(pb.AckRequest(node_name="n1", version=1), timeout=5)
    finally:
        stop(server, servicer)
    assert not path.exists()


def test_observer_and_api_sockets_are_0600(tmp_path: Path, loose_umask: None) -> None:
    observer = ObserverServer(FlowObserver("n1", StaticDirectory(), capacity=16), tmp_path / "o.sock")
    observer.start()
    api = ApiServer(tmp_path / "agent.sock", {})
    api.start()
    try:
        assert mode(tmp_path / "o.sock") == 0o600
        assert mode(tmp_path / "agent.sock") == 0o600
    finally:
        api.stop()
        observer.stop(0.1)


def test_operator_refuses_oversized_requests() -> None:
    servicer = StateServicer(StateLog(10), PropagationTracker(lambda _s: None), OperatorMetrics(),
                             ready=lambda: True)
    server, port = serve(servicer, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            ack = channel.unary_unary(f"/{SERVICE}/Ack", request_serializer=pb.AckRequest.SerializeToString,
                                      response_deserializer=pb.AckResponse.FromString)
            ack(pb.AckRequest(node_name="n" * 1000, version=1), timeout=5)  # small: fine
            with pytest.raises(grpc.RpcError) as err:
                ack(pb.AckRequest(node_name="n" * (grpc_limits.OPERATOR.recv_bytes + 1), version=1), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            assert "larger than max" in err.value.details()  # type: ignore[attr-defined]
    finally:
        stop(server, servicer)


def test_observer_refuses_calls_beyond_its_workers(tmp_path: Path) -> None:
    """Followers hold a worker each; one more call than workers is refused, not queued."""
    observer = FlowObserver("n1", StaticDirectory(), capacity=16)
    server = ObserverServer(observer, None, tcp="127.0.0.1:0", max_workers=2)
    server.start()
    calls: list[grpc.Future] = []
    channel = grpc.insecure_channel(f"127.0.0.1:{server.tcp_port}")
    try:
        stub = opb_grpc.ObserverStub(channel)
        for _ in range(2):
            call = stub.GetFlows(opb.GetFlowsRequest(follow=True), timeout=30)
            calls.append(call)
        ready = threading.Event()
        threading.Timer(1.0, ready.set).start()
        ready.wait()  # both followers hold their worker
        with pytest.raises(grpc.RpcError) as err:
            stub.ServerStatus(opb.ServerStatusRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        for call in calls:
            call.cancel()
        def answers() -> bool:
            try:
                stub.ServerStatus(opb.ServerStatusRequest(), timeout=5)
                return True
            except grpc.RpcError:
                return False
        assert wait_for(answers, 10, 0.1, "the cancelled followers to give their workers back")
        with pytest.raises(grpc.RpcError) as big:  # and requests are bounded in size
            time_left = 5.0
            stub.GetFlows(opb.GetFlowsRequest(number=1, whitelist=[opb.FlowFilter(
                namespace=["ns-0000001"] * (grpc_limits.OBSERVER.recv_bytes // 10))]), timeout=time_left).next()
        assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "larger than max" in big.value.details()  # type: ignore[attr-defined]
    finally:
        for call in calls:
            call.cancel()
        channel.close()
        server.stop(0.1)


def test_limits_options() -> None:
    opts = dict(grpc_limits.OPERATOR.server_options())
    assert opts["grpc.max_receive_message_length"] == 64 * 1024
    assert opts["grpc.max_send_message_length"] == 64 * 1024 * 1024
    client = dict(grpc_limits.OPERATOR.client_options())
    assert client["grpc.max_receive_message_length"] == opts["grpc.max_send_message_length"]
