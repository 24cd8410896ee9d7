"""The gRPC state stream: snapshot then ordered deltas, resume with only the missing deltas,
acks feeding the propagation histogram, and the client's reconnects."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from membrane.api.backoff import Backoff
from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state_client import StateClient
from membrane.api.state_objects import (
    EndpointState,
    IdentityState,
    Kind,
    NodeState,
    StateObject,
    StateUpdate,
    apply_update,
)
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.propagation import PropagationTracker
from membrane.operator.state_log import StateLog
from membrane.operator.state_serving import CODEC, SERVICE, StateServicer, batched, serve, stop
from membrane_testkit.waiting import wait_for

SUBSCRIBE = f"/{SERVICE}/Subscribe"
ACK = f"/{SERVICE}/Ack"


class Server:
    """A StateService over a StateLog the test commits to by hand."""

    def __init__(self, max_deltas: int = 100, port: int = 0) -> None:
        self.log = StateLog(max_deltas)
        self.metrics = OperatorMetrics()
        self.tracker = PropagationTracker(self.metrics.propagation.observe)
        self.servicer = StateServicer(self.log, self.tracker, self.metrics, ready=lambda: True)
        self.server, self.port = serve(self.servicer, f"127.0.0.1:{port}")
        self.objects: dict[tuple[Kind, str], StateObject] = {}

    def put(self, *objs: StateObject, seen_at: float | None = None) -> int:
        for obj in objs:
            self.objects[(obj.kind, obj.key)] = obj
        return self.commit(seen_at)

    def drop(self, *objs: StateObject) -> int:
        for obj in objs:
            self.objects.pop((obj.kind, obj.key))
        return self.commit(None)

    def commit(self, seen_at: float | None) -> int:
        delta = self.log.commit(dict(self.objects), seen_at or time.monotonic())
        assert delta is not None
        self.tracker.committed(delta.version, delta.seen_at)
        return delta.version

    def propagations(self) -> float:
        return self.metrics.registry.get_sample_value(
            "membrane_operator_state_propagation_seconds_count") or 0.0

    def stop(self) -> None:
        stop(self.server, self.servicer, grace=0.2)


class Agent:
    """What an agent does with the stream: apply, remember, (the client acks)."""

    def __init__(self, port: int, name: str = "n1", **kwargs: object) -> None:
        self.updates: list[StateUpdate] = []
        self.state: dict = {}
        self.lock = threading.Lock()
        self.client = StateClient(f"127.0.0.1:{port}", name, self.apply,
                                  backoff=Backoff(initial=0.05, maximum=0.2), **kwargs)  # type: ignore[arg-type]
        self.client.start()

    def apply(self, update: StateUpdate) -> None:
        with self.lock:
            self.updates.append(update)
            apply_update(self.state, update)

    @property
    def version(self) -> int:
        return self.client.last_version


@pytest.fixture
def server() -> Iterator[Server]:
    instance = Server()
    yield instance
    instance.stop()


NODE = NodeState("n1", ("192.0.2.1",), "10.200.0.0/24")
WEB = IdentityState(256, ("k8s:app=web",))


def endpoint(name: str, ip: str) -> EndpointState:
    return EndpointState("default", name, (ip,), 256, "n1")


def test_snapshot_then_deltas_in_order(server: Server) -> None:
    server.put(NODE, WEB)
    v2 = server.put(endpoint("a", "10.200.0.2"))
    agent = Agent(server.port)
    try:
        assert wait_for(lambda: agent.version == v2)
        first = agent.updates[0]
        assert first.snapshot and first.version == v2
        assert [c.key[0] for c in first.changes] == [Kind.NODE, Kind.IDENTITY, Kind.ENDPOINT]
        versions = [server.put(endpoint(f"p{i}", f"10.200.0.{10 + i}")) for i in range(20)]
        versions.append(server.drop(endpoint("a", "")))
        assert wait_for(lambda: agent.version == versions[-1])
        deltas = agent.updates[1:]
        # every version, in order, once: one delta each, or several in a batch when it lagged
        chain = [v2] + [u.version for u in deltas]
        assert [u.base_version for u in deltas] == chain[:-1]
        assert chain[-1] == versions[-1] and set(chain[1:]) <= set(versions)
        assert not any(u.snapshot for u in deltas)
        assert agent.state == server.objects
    finally:
        agent.client.stop()


def test_resume_gets_only_missing_deltas(server: Server) -> None:
    server.put(NODE, WEB)
    agent = Agent(server.port)
    assert wait_for(lambda: agent.version == server.log.version)
    agent.client.stop()
    resume_from, stream = agent.version, agent.client.stream_id
    missed = [server.put(endpoint("a", "10.200.0.2")), server.put(endpoint("b", "10.200.0.3"))]

    again = Agent(server.port, last_version=resume_from, stream_id=stream)
    try:
        assert wait_for(lambda: again.version == missed[-1])
        # both missed versions were waiting: one batched delta from where it left off
        assert [(u.base_version, u.version, u.snapshot) for u in again.updates] == [
            (resume_from, missed[-1], False)]
        assert server.metrics.registry.get_sample_value(
            "membrane_operator_state_snapshots_sent_total") == 1  # only the first agent's
    finally:
        again.client.stop()

    # Another history (an operator restart) or a version out of the log: a snapshot.
    stranger = Agent(server.port, name="n2", last_version=1, stream_id="other")
    try:
        assert wait_for(lambda: stranger.version == server.log.version)
        assert stranger.updates[0].snapshot
    finally:
        stranger.client.stop()


def test_too_old_version_gets_a_snapshot() -> None:
    server = Server(max_deltas=2)
    try:
        first = server.put(NODE)
        for i in range(4):
            server.put(endpoint(f"p{i}", f"10.200.0.{i + 2}"))
        agent = Agent(server.port, last_version=first, stream_id=server.log.stream_id)
        try:
            assert wait_for(lambda: agent.version == server.log.version)
            assert agent.updates[0].snapshot and agent.state == server.objects
        finally:
            agent.client.stop()
    finally:
        server.stop()


def test_acks_feed_the_propagation_histogram(server: Server) -> None:
    server.put(NODE)
    fast = Agent(server.port, "n1")
    slow_gate = threading.Event()
    slow_gate.set()

    class Slow(Agent):
        def apply(self, update: StateUpdate) -> None:
            slow_gate.wait(5)
            super().apply(update)

    slow = Slow(server.port, "n2")
    try:
        assert wait_for(lambda: fast.version == slow.version == server.log.version)
        assert wait_for(lambda: server.tracker.nodes == ["n1", "n2"])
        baseline = server.propagations()
        slow_gate.clear()
        version = server.put(endpoint("a", "10.200.0.2"), seen_at=time.monotonic() - 0.25)
        assert wait_for(lambda: fast.version == version)
        time.sleep(0.1)  # observation window: nothing may count as propagated while n2 has not acked
        assert server.propagations() == baseline  # n2 has not acked yet
        slow_gate.set()
        assert wait_for(lambda: server.propagations() == baseline + 1)
        total = server.metrics.registry.get_sample_value(
            "membrane_operator_state_propagation_seconds_sum")
        assert total is not None and total >= 0.25  # measured from when the API change was seen
    finally:
        slow_gate.set()
        fast.client.stop()
        slow.client.stop()


def test_acks_ride_on_the_stream_coalesced(server: Server) -> None:
    server.put(NODE)
    agent = Agent(server.port)
    unary: list[int] = []
    agent.client.ack = unary.append  # type: ignore[method-assign]
    try:
        assert wait_for(lambda: server.tracker.acked_version("n1") == server.log.version)
        versions = [server.put(endpoint(f"p{i}", f"10.200.0.{10 + i}")) for i in range(10)]
        assert wait_for(lambda: server.tracker.acked_version("n1") == versions[-1])
        assert unary == []  # every ack went on the Subscribe stream
    finally:
        agent.client.stop()


def test_batched_delta_is_the_concatenation_with_a_base() -> None:
    log = StateLog(10)
    log.use_codec(CODEC)
    for i in range(3):
        log.apply({(Kind.ENDPOINT, f"default/p{i}"): endpoint(f"p{i}", f"10.200.0.{i + 2}")}, 0.0)
    wires = log.wire_after(0)
    assert wires is not None
    [(version, wire)] = batched(wires)
    message = pb.StateUpdate.FromString(wire)
    assert (version, message.version, message.base_version) == (3, 3, 0)
    assert message.type == pb.StateUpdate.TYPE_DELTA and message.stream_id == log.stream_id
    assert [c.endpoint.name for c in message.changes] == ["p0", "p1", "p2"]
    assert batched(wires, limit=1) == wires  # over the size limit: one message each
    assert batched(wires[:1]) == wires[:1]


def test_old_client_form_unary_request_and_unary_ack(server: Server) -> None:
    """An agent of the previous release: one request then half-close, acks with `Ack`, no
    batches: it gets a snapshot, then one message per version, and its acks count."""
    server.put(NODE)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        subscribe = channel.unary_stream(SUBSCRIBE, request_serializer=pb.SubscribeRequest.SerializeToString,
                                         response_deserializer=pb.StateUpdate.FromString)
        ack = channel.unary_unary(ACK, request_serializer=pb.AckRequest.SerializeToString,
                                  response_deserializer=pb.AckResponse.FromString)
        call = subscribe(pb.SubscribeRequest(node_name="old"))
        messages = iter(call)
        first = next(messages)
        assert first.type == pb.StateUpdate.TYPE_SNAPSHOT
        assert wait_for(lambda: server.tracker.nodes == ["old"])
        versions = [server.put(endpoint(f"p{i}", f"10.200.0.{10 + i}")) for i in range(3)]
        got = [next(messages) for _ in versions]
        assert [(m.version, m.base_version) for m in got] == [(v, 0) for v in versions]
        ack(pb.AckRequest(node_name="old", version=versions[-1], stream_id=first.stream_id), timeout=5)
        assert server.tracker.acked_version("old") == versions[-1]
        call.cancel()


def test_new_client_falls_back_to_unary_acks_on_an_old_server(server: Server) -> None:
    """The previous release's operator: Subscribe takes one request, says nothing about stream
    acks: the client acks with the unary RPC."""
    server.put(NODE)
    acks: list[int] = []

    def subscribe(request: pb.SubscribeRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        _, chunks = server.log.snapshot_wire()
        yield from chunks
        while context.is_active():  # a stand-in stream that stays open, sending nothing
            time.sleep(0.02)

    def unary_ack(request: pb.AckRequest, context: grpc.ServicerContext) -> pb.AckResponse:
        acks.append(request.version)
        return pb.AckResponse()

    old = grpc.server(futures.ThreadPoolExecutor(4))
    old.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            subscribe, request_deserializer=pb.SubscribeRequest.FromString, response_serializer=None),
        "Ack": grpc.unary_unary_rpc_method_handler(
            unary_ack, request_deserializer=pb.AckRequest.FromString,
            response_serializer=pb.AckResponse.SerializeToString)}),))
    port = old.add_insecure_port("127.0.0.1:0")
    old.start()
    agent = Agent(port)
    try:
        assert wait_for(lambda: acks == [server.log.version])
    finally:
        agent.client.stop()
        old.stop(0)


def test_client_reconnects_with_backoff_after_server_restart() -> None:
    server = Server()
    port = server.port
    server.put(NODE)
    agent = Agent(port)
    try:
        assert wait_for(lambda: agent.version == 1)
        server.stop()
        time.sleep(0.3)  # observation window: several failed reconnects while nobody listens
        restarted = Server(port=port)  # a new operator process: a new history
        try:
            restarted.put(NODE, WEB)
            assert wait_for(lambda: agent.client.stream_id == restarted.log.stream_id, timeout=10)
            assert agent.updates[-1].snapshot and agent.state == restarted.objects
            assert agent.client.connects >= 2
        finally:
            restarted.stop()
    finally:
        agent.client.stop()


def test_one_agent_leaving_does_not_end_the_others_streams(server: Server) -> None:
    """The commit tick is shared by every waiting stream: cancelling one stream (its agent
    left) must not cancel it for the rest (it used to end every stream at once)."""
    server.put(NODE, WEB)
    stays, leaves = Agent(server.port, "n1"), Agent(server.port, "n2")
    try:
        assert wait_for(lambda: stays.version == leaves.version == server.log.version)
        assert wait_for(lambda: server.tracker.acked_versions() == {"n1": server.log.version, "n2": server.log.version})
        time.sleep(0.1)  # both streams now wait on the same tick
        leaves.client.stop()
        assert wait_for(lambda: set(server.tracker.acked_versions()) == {"n1"})
        version = server.put(endpoint("late", "10.200.0.99"))
        assert wait_for(lambda: stays.version == version)
        assert stays.client.connects == 1  # never resubscribed
        assert wait_for(lambda: server.tracker.acked_versions() == {"n1": version})
    finally:
        stays.client.stop()
        leaves.client.stop()


def test_acks_say_what_is_enforced_and_survive_a_reconnect(server: Server) -> None:
    """`apply` may return the version it enforces: a refused update is not acked; after a
    reconnect that missed nothing, the first request restates the enforced version."""
    server.put(NODE, WEB)
    refuse: set[int] = set()
    enforced = [0]

    def apply(update: StateUpdate) -> int:
        if update.version not in refuse:
            enforced[0] = update.version
        return enforced[0]

    client = StateClient(f"127.0.0.1:{server.port}", "n1", apply, backoff=Backoff(initial=0.05, maximum=0.2))
    client.start()
    try:
        assert wait_for(lambda: server.tracker.acked_versions() == {"n1": server.log.version})
        good = server.log.version
        refuse.add(server.log.version + 1)
        refused = server.put(endpoint("big", "10.200.0.50"))
        assert wait_for(lambda: client.last_version == refused)
        time.sleep(0.1)
        assert server.tracker.acked_versions() == {"n1": good}  # resume point moved, the ack did not
        later = server.put(endpoint("small", "10.200.0.51"))
        assert wait_for(lambda: server.tracker.acked_versions() == {"n1": later})
        call = client._call
        assert call is not None
        call.cancel()  # a reconnect with nothing missed: no update arrives to ack
        assert wait_for(lambda: client.connects == 2)
        assert wait_for(lambda: server.tracker.acked_versions() == {"n1": later})
    finally:
        client.stop()
