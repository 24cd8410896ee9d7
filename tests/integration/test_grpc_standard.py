"""gRPC health checking and server reflection on every membrane gRPC server (the operator's
state stream, the agent's observer), through the standard clients: the Health stub and the
reflection descriptor database that grpcurl-like tools use."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from membrane.agent.observing import FlowObserver, ObserverServer, StaticDirectory
from membrane.grpc_standard import HEALTH_SERVICE, REFLECTION_SERVICE, StandardServices
from membrane.operator.config import OperatorConfig
from membrane.operator.crds import CRDS
from membrane.operator.running import Operator
from membrane.operator.state_serving import SERVICE as STATE_SERVICE
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.waiting import wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OBSERVER_SERVICE = "membrane.observer.v1.Observer"


def check(channel: grpc.Channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                      timeout=5).status


def reflected_methods(channel: grpc.Channel, service: str) -> tuple[set[str], set[str]]:
    """(services listed, methods of `service`) as a reflection client sees them."""
    database = ProtoReflectionDescriptorDatabase(channel)
    listed = set(database.get_services())
    from google.protobuf.descriptor_pool import DescriptorPool

    pool = DescriptorPool(database)
    return listed, {m.name for m in pool.FindServiceByName(service).methods}


def test_operator_state_stream_has_health_and_reflection() -> None:
    with KubeApiServer(port=0) as api:
        operator = Operator(OperatorConfig(api_server=api.url, identity="op", http_addr="127.0.0.1:0",
                                           grpc_addr="127.0.0.1:0", leader_election=False,
                                           resync_seconds=0.1, insecure_plaintext=True)).start()
        try:
            with grpc.insecure_channel(f"127.0.0.1:{operator.grpc_port}") as channel:
                assert check(channel, "") == SERVING
                # No membrane CRDs yet: their watches cannot list, no full state, so the stream is
                # not serving.
                time.sleep(0.5)  # observation window: several resync passes, still not serving
                assert check(channel, STATE_SERVICE) == NOT_SERVING
                with api.api_client() as apis:
                    for crd in CRDS:  # every kind the operator watches (identities, packet filters, ...)
                        apis.call_api("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "POST", body=crd)
                assert wait_for(lambda: check(channel, STATE_SERVICE) == SERVING, timeout=30)
                with pytest.raises(grpc.RpcError) as err:
                    check(channel, "no.such.Service")
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
                listed, methods = reflected_methods(channel, STATE_SERVICE)
                assert {STATE_SERVICE, HEALTH_SERVICE, REFLECTION_SERVICE} <= listed
                assert methods == {"Subscribe", "Ack"}
        finally:
            operator.stop()


@pytest.fixture()
def observer_server(tmp_path: Path) -> Iterator[ObserverServer]:
    server = ObserverServer(FlowObserver("node1", StaticDirectory(), capacity=8),
                            tmp_path / "n.observer.sock", tcp="127.0.0.1:0")
    server.start()
    yield server
    server.stop(0.1)


def test_observer_has_health_and_reflection(observer_server: ObserverServer) -> None:
    for target in (f"unix://{observer_server.unix_path}", f"127.0.0.1:{observer_server.tcp_port}"):
        with grpc.insecure_channel(target) as channel:
            assert check(channel, "") == SERVING
            assert check(channel, OBSERVER_SERVICE) == SERVING
            listed, methods = reflected_methods(channel, OBSERVER_SERVICE)
            assert {OBSERVER_SERVICE, HEALTH_SERVICE, REFLECTION_SERVICE} <= listed
            assert {"GetFlows", "ServerStatus"} <= methods


def test_watch_follows_status_and_shutdown() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    standard = StandardServices(server, [OBSERVER_SERVICE], serving=False)
    port = server.add_insecure_port("127.0.0.1:0")
    standard.start()
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=OBSERVER_SERVICE), timeout=10)
            assert next(stream).status == NOT_SERVING
            standard.set_serving(True)
            assert next(stream).status == SERVING
            standard.shutting_down()
            assert next(stream).status == NOT_SERVING
            assert check(channel, "") == NOT_SERVING
            standard.set_serving(True)  # ignored once shutting down
            assert check(channel, OBSERVER_SERVICE) == NOT_SERVING
            stream.cancel()
    finally:
        server.stop(0)
