"""Only the leading operator replica serves the state stream (issue 9.3 with two replicas):
a standby refuses Subscribe and Ack with UNAVAILABLE and `membrane-not-leader`, says
NOT_SERVING on gRPC health, and counts nothing; the agent's client takes the refusal as
"retry soon", keeps what it holds and its resume point, and is served as soon as the replica
leads; a leader that steps down ends its open streams and the client resumes (deltas only)
when it leads again."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from membrane.api.backoff import Backoff
from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state_client import NOT_LEADER_KEY, StateClient, refused_as_standby
from membrane.api.state_objects import IdentityState, NodeState, StateUpdate, apply_update
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.propagation import PropagationTracker
from membrane.operator.state_log import StateLog
from membrane.operator.state_serving import SERVICE, StateServicer, serve, stop
from membrane_testkit.waiting import wait_for

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Replica:
    """A StateService whose leadership the test switches."""

    def __init__(self) -> None:
        self.lead = False
        self.log = StateLog(100)
        self.metrics = OperatorMetrics()
        self.acks: list[tuple[str, int]] = []
        self.tracker = PropagationTracker(self.metrics.propagation.observe)
        acked = self.tracker.acked
        self.tracker.acked = lambda node, version, when: (self.acks.append((node, version)),  # type: ignore[method-assign]
                                                           acked(node, version, when))[1]
        self.servicer = StateServicer(self.log, self.tracker, self.metrics, ready=lambda: True,
                                      leading=lambda: self.lead)
        self.server, self.port = serve(self.servicer, "127.0.0.1:0")
        self.objects: dict = {}

    def lead_now(self, lead: bool) -> None:
        self.lead = lead
        self.servicer.leadership_changed()

    def put(self, obj: object) -> int:
        self.objects[(obj.kind, obj.key)] = obj  # type: ignore[attr-defined]
        delta = self.log.commit(dict(self.objects), time.monotonic())
        assert delta is not None
        self.tracker.committed(delta.version, delta.seen_at)
        return delta.version

    def refused(self) -> float:
        return self.metrics.registry.get_sample_value(
            "membrane_operator_state_stream_refused_total", {"reason": "not_leader"}) or 0.0

    def health(self) -> int:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5).status


@pytest.fixture
def replica() -> Iterator[Replica]:
    instance = Replica()
    yield instance
    stop(instance.server, instance.servicer, grace=0.2)


class Agent:
    def __init__(self, port: int) -> None:
        self.updates: list[StateUpdate] = []
        self.state: dict = {}
        self.lock = threading.Lock()
        # A slow connection backoff: what is measured is the standby retry, not this.
        self.client = StateClient(f"127.0.0.1:{port}", "n1", self.apply,
                                  backoff=Backoff(initial=5.0, maximum=10.0))
        self.client.start()

    def apply(self, update: StateUpdate) -> None:
        with self.lock:
            self.updates.append(update)
            apply_update(self.state, update)


NODE = NodeState("n1", ("192.0.2.1",), "10.200.0.0/24")
WEB = IdentityState(256, ("k8s:app=web",))
DB = IdentityState(257, ("k8s:app=db",))


def test_standby_refuses_subscribe_and_ack_and_is_not_serving(replica: Replica) -> None:
    replica.put(NODE)
    assert wait_for(lambda: replica.health() == NOT_SERVING)
    with grpc.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        subscribe = channel.stream_stream(f"/{SERVICE}/Subscribe",
                                          request_serializer=pb.SubscribeRequest.SerializeToString,
                                          response_deserializer=pb.StateUpdate.FromString)
        with pytest.raises(grpc.RpcError) as refused:
            list(subscribe(iter([pb.SubscribeRequest(node_name="n1", acked_version=1)]), timeout=5))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not the leader" in refused.value.details()
        assert (NOT_LEADER_KEY, "1") in tuple(refused.value.trailing_metadata())
        assert refused_as_standby(refused.value)
        ack = channel.unary_unary(f"/{SERVICE}/Ack", request_serializer=pb.AckRequest.SerializeToString,
                                  response_deserializer=pb.AckResponse.FromString)
        with pytest.raises(grpc.RpcError) as ack_refused:
            ack(pb.AckRequest(node_name="n1", version=1, stream_id=replica.log.stream_id), timeout=5)
        assert refused_as_standby(ack_refused.value)
    assert replica.acks == [] and replica.refused() == 2  # a standby counts no ack
    assert replica.tracker.nodes == []  # nor a subscriber
    replica.lead_now(True)
    assert wait_for(lambda: replica.health() == SERVING)
    replica.lead_now(False)
    assert wait_for(lambda: replica.health() == NOT_SERVING)


def test_client_retries_soon_and_is_served_once_the_replica_leads(replica: Replica) -> None:
    replica.put(NODE)
    agent = Agent(replica.port)
    try:
        assert wait_for(lambda: agent.client.standby_refusals >= 3)
        assert agent.updates == [] and replica.acks == []
        started = time.monotonic()
        replica.lead_now(True)
        # The short standby retry, not the 5 s connection backoff.
        assert wait_for(lambda: agent.client.last_version == 1, timeout=3)
        assert time.monotonic() - started < 2.0
        assert agent.updates[0].snapshot
        assert wait_for(lambda: ("n1", 1) in replica.acks)
    finally:
        agent.client.stop()


def test_leader_stepping_down_ends_streams_and_the_client_resumes(replica: Replica) -> None:
    replica.lead_now(True)
    replica.put(NODE)
    agent = Agent(replica.port)
    try:
        assert wait_for(lambda: agent.client.last_version == 1)
        stream_id = agent.client.stream_id
        replica.lead_now(False)
        assert wait_for(lambda: agent.client.standby_refusals >= 1, timeout=5)
        version = replica.put(WEB)  # committed while it does not lead: not sent
        time.sleep(0.3)
        assert agent.client.last_version == 1 and len(agent.state) == 1  # nothing lost either
        acks_before = len(replica.acks)
        replica.lead_now(True)
        assert wait_for(lambda: agent.client.last_version == version, timeout=3)
        assert agent.client.stream_id == stream_id
        assert [u.snapshot for u in agent.updates] == [True, False]  # resumed: the delta only
        assert len(agent.state) == 2
        assert wait_for(lambda: ("n1", version) in replica.acks[acks_before:])
    finally:
        agent.client.stop()
