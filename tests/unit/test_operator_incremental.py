"""The operator's scale paths: the incremental state builder agrees with a from-scratch build,
a state log encodes each change once and its bytes decode to what the objects say, and the
propagation floor follows acks."""

from __future__ import annotations

import random

from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state_codec import change_from_pb, delta_message, snapshot_messages
from membrane.api.state_objects import Change, EndpointState, IdentityState, Kind, NodeState
from membrane.operator.propagation import PropagationTracker
from membrane.operator.state_building import StateBuilder, build_state
from membrane.operator.state_log import StateLog
from membrane.operator.state_serving import CODEC


def _ns(name: str, team: str) -> dict:
    return {"metadata": {"name": name, "labels": {"team": team}}}


def _pod(ns: str, name: str, app: str, node: str, ip: str | None, phase: str = "Running") -> dict:
    status: dict = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {"metadata": {"name": name, "namespace": ns, "uid": f"u-{ns}-{name}",
                         "labels": {"app": app}},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]}, "status": status}


def _identity(number: int, ns: str, team: str, app: str) -> dict:
    return {"metadata": {"name": str(number)}, "securityLabels": {
        "k8s:app": app, "meta:namespace": ns, "ns:team": team,
        "ns:kubernetes.io/metadata.name": ns}}


def _policy(ns: str, name: str, app: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": app}}}}


def test_incremental_builder_matches_full_build() -> None:
    rng = random.Random(7)
    namespaces = {n: _ns(n, "a") for n in ("a", "b")}
    nodes = {f"n{i}": {"metadata": {"name": f"n{i}"}} for i in range(3)}
    pods: dict[str, dict] = {}
    identities: dict[str, dict] = {}
    policies: dict[str, dict] = {}
    builder = StateBuilder()
    for name, obj in namespaces.items():
        builder.set_namespace(name, obj)
    for name, obj in nodes.items():
        builder.set_node(name, obj)
    builder.take_changes()
    number = 256
    for step in range(600):
        what = rng.random()
        if what < 0.5:
            ns, name = rng.choice(("a", "b")), f"p{rng.randrange(30)}"
            key = f"{ns}/{name}"
            if key in pods and rng.random() < 0.2:
                del pods[key]
                builder.set_pod(key, None)
            else:
                ip = f"10.0.{rng.randrange(3)}.{rng.randrange(250)}" if rng.random() < 0.9 else None
                phase = "Succeeded" if rng.random() < 0.05 else "Running"
                pods[key] = _pod(ns, name, f"app{rng.randrange(4)}", f"n{rng.randrange(3)}", ip, phase)
                builder.set_pod(key, pods[key])
        elif what < 0.7:
            ns, app = rng.choice(("a", "b")), f"app{rng.randrange(4)}"
            team = namespaces[ns]["metadata"]["labels"]["team"]
            if identities and rng.random() < 0.3:
                name = rng.choice(sorted(identities))
                del identities[name]
                builder.set_identity(name, None)
            else:
                number += 1 if rng.random() < 0.8 else 0  # sometimes a duplicate number's rewrite
                identities[str(number)] = _identity(number, ns, team, app)
                builder.set_identity(str(number), identities[str(number)])
        elif what < 0.8:
            ns = rng.choice(("a", "b"))
            namespaces[ns] = _ns(ns, rng.choice(("a", "b")))
            builder.set_namespace(ns, namespaces[ns])
        elif what < 0.9:
            ns, name = rng.choice(("a", "b")), f"pol{rng.randrange(3)}"
            key = f"{ns}/{name}"
            if key in policies and rng.random() < 0.3:
                del policies[key]
                builder.set_policy(key, None)
            else:
                policies[key] = _policy(ns, name, f"app{rng.randrange(4)}")
                builder.set_policy(key, policies[key])
        else:
            name = f"n{rng.randrange(3)}"
            nodes[name] = {"metadata": {"name": name, "annotations": {
                "membrane.io/pod-cidr": f"10.0.{rng.randrange(9)}.0/24"}}}
            builder.set_node(name, nodes[name])
        if step % 25 == 0:
            full = build_state(namespaces.values(), nodes.values(), pods.values(),
                               policies.values(), identities.values())
            assert builder.state == full, step
    full = build_state(namespaces.values(), nodes.values(), pods.values(), policies.values(),
                       identities.values())
    assert builder.state == full
    assert any(k[0] is Kind.ENDPOINT for k in full)


def test_touched_keys_only() -> None:
    builder = StateBuilder()
    builder.load([_ns("a", "x")], [], [_pod("a", f"p{i}", "web", "n1", f"10.0.0.{i}")
                                         for i in range(50)], [], [_identity(300, "a", "x", "web")])
    builder.take_changes()
    builder.set_pod("a/p3", _pod("a", "p3", "web", "n1", "10.0.0.99"))
    assert list(builder.take_changes()) == [(Kind.ENDPOINT, "a/p3")]
    builder.set_identity("301", _identity(301, "a", "x", "db"))  # nobody holds these labels
    assert list(builder.take_changes()) == [(Kind.IDENTITY, "301")]


def test_log_encodes_once_and_bytes_match_messages() -> None:
    log = StateLog(8, stream_id="s", codec=CODEC)
    node = NodeState("n1", ("192.0.2.1",), "10.0.0.0/24")
    ident = IdentityState(256, ("k8s:app=web",))
    ep = EndpointState("d", "a", ("10.0.0.2",), 256, "n1", (("app", "web"),))
    delta = log.apply({(ep.kind, ep.key): ep, (node.kind, node.key): node,
                       (ident.kind, ident.key): ident}, 1.0)
    assert delta is not None and delta.version == 1
    assert log.apply({(node.kind, node.key): node}, 2.0) is None  # no change, no version
    ((version, wire),) = log.wire_after(0) or []
    expected = delta_message(1, "s", delta.changes)
    assert version == 1 and pb.StateUpdate.FromString(wire) == expected
    gone = log.apply({(ep.kind, ep.key): None}, 3.0)
    assert gone is not None and gone.changes == (Change((Kind.ENDPOINT, "d/a"), None),)
    assert [change_from_pb(c) for c in pb.StateUpdate.FromString(gone.wire).changes] == \
        list(gone.changes)
    version, chunks = log.snapshot_wire()
    _, objects = log.snapshot()
    assert version == 2 and [pb.StateUpdate.FromString(c) for c in chunks] == \
        list(snapshot_messages(2, "s", objects))
    assert log.snapshot_wire()[1] is chunks  # built once per version
    # A log that got its codec late encodes what it already holds.
    late = StateLog(8, stream_id="t")
    late.commit({(node.kind, node.key): node}, 1.0)
    late.use_codec(CODEC)
    assert pb.StateUpdate.FromString(late.wire_after(0)[0][1]).changes[0].node.name == "n1"  # type: ignore[index]
    assert pb.StateUpdate.FromString(late.snapshot_wire()[1][0]).changes[0].node.name == "n1"


def test_propagation_floor_with_many_nodes() -> None:
    seen: list[float] = []
    tracker = PropagationTracker(seen.append)
    for i in range(1000):
        tracker.subscribed(f"n{i}")
    tracker.committed(1, 0.0)
    tracker.committed(2, 1.0)
    for i in range(999):
        assert tracker.acked(f"n{i}", 2, 5.0) == 0
    tracker.acked("n999", 1, 6.0)
    assert seen == [6.0]
    tracker.unsubscribed("n999", 7.0)  # the last one behind leaves: version 2 completes
    assert seen == [6.0, 6.0]
    tracker.unsubscribed("ghost", 8.0)  # unknown node: nothing happens
    tracker.subscribed("late")
    tracker.committed(3, 8.0)
    assert tracker.acked("late", 3, 9.0) == 0  # the others have not acked 3
