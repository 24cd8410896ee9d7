"""Pure parts of the operator: PodCIDR planning, backoff, state log, propagation, policy
verdicts, state building, generated files in sync."""

from __future__ import annotations

import random
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from membrane.api.backoff import Backoff
from membrane.api.state_objects import Change, EndpointState, IdentityState, Kind, NodeState
from membrane.operator.cidr_pool import CidrPool, NodeCidrFacts, PoolExhausted
from membrane.operator.crds import CRDS, crd_file_name, crd_yaml
from membrane.operator.policy_checking import check_policy
from membrane.operator.propagation import PropagationTracker
from membrane.operator.state_building import build_state
from membrane.operator.state_log import StateLog

ROOT = Path(__file__).resolve().parents[2]


# --- PodCIDR planning -----------------------------------------------------------------------
def test_plan_keeps_recorded_ranges_and_fills_lowest_free() -> None:
    pool = CidrPool("10.200.0.0/16", 24)
    plan = pool.plan([NodeCidrFacts("b", annotation="10.200.0.0/24", created="2"),
                      NodeCidrFacts("a", created="1"), NodeCidrFacts("c", created="3")])
    assert plan.effective["b"] == IPv4Network("10.200.0.0/24")
    assert plan.to_write == {"a": IPv4Network("10.200.1.0/24"), "c": IPv4Network("10.200.2.0/24")}


def test_plan_spec_pod_cidr_wins_and_collisions_are_reassigned() -> None:
    pool = CidrPool("10.200.0.0/16", 24)
    plan = pool.plan([NodeCidrFacts("old", annotation="10.200.5.0/24", created="1"),
                      NodeCidrFacts("spec", spec_pod_cidr="10.200.0.0/24", created="2"),
                      NodeCidrFacts("clash", annotation="10.200.5.0/24", created="3"),
                      NodeCidrFacts("junk", annotation="nonsense", created="4")])
    assert plan.effective["spec"] == IPv4Network("10.200.0.0/24")
    assert "spec" not in plan.to_write and "old" not in plan.to_write
    assert plan.to_write == {"clash": IPv4Network("10.200.1.0/24"),
                             "junk": IPv4Network("10.200.2.0/24")}
    assert len(plan.conflicts) == 2


def test_plan_exhausted_pool() -> None:
    pool = CidrPool("10.0.0.0/23", 24)
    assert pool.size == 2
    with pytest.raises(PoolExhausted):
        pool.plan([NodeCidrFacts(n) for n in "abc"])


# --- backoff --------------------------------------------------------------------------------
def test_backoff_grows_with_jitter_and_resets() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.next() for _ in range(8)]
    for n, delay in enumerate(delays):
        ceiling = min(0.1 * 2 ** n, 1.0)
        assert ceiling * 0.5 <= delay <= ceiling
    assert len(set(delays)) == len(delays)  # jittered, not lock-step
    backoff.reset()
    assert backoff.next() <= 0.1


# --- state log and propagation --------------------------------------------------------------
def _state(*objs):  # type: ignore[no-untyped-def]
    return {(o.kind, o.key): o for o in objs}


def test_state_log_versions_deltas_and_window() -> None:
    log = StateLog(max_deltas=2)
    node = NodeState("n1", ("192.0.2.1",), "10.200.0.0/24")
    ident = IdentityState(256, ("k8s:app=a",))
    endpoint = EndpointState("default", "a", ("10.200.0.5",), 256, "n1")
    assert log.commit(_state(node), 1.0).version == 1  # type: ignore[union-attr]
    assert log.commit(_state(node), 2.0) is None  # nothing changed: no version
    delta = log.commit(_state(node, ident, endpoint), 3.0)
    assert delta is not None and delta.version == 2
    assert [c.key[0] for c in delta.changes] == [Kind.IDENTITY, Kind.ENDPOINT]
    delta = log.commit(_state(node), 4.0)  # deletes: endpoint before its identity
    assert delta is not None
    assert [c.key for c in delta.changes] == [(Kind.ENDPOINT, "default/a"), (Kind.IDENTITY, "256")]
    assert all(c.obj is None for c in delta.changes)
    assert [d.version for d in log.deltas_after(1) or []] == [2, 3]
    assert log.deltas_after(0) is None  # version 1 fell out of the window of 2
    assert log.deltas_after(3) == []
    assert log.deltas_after(9) is None  # another history
    assert log.snapshot() == (3, [node])


def test_propagation_waits_for_every_subscriber() -> None:
    observed: list[float] = []
    tracker = PropagationTracker(observed.append)
    tracker.committed(1, 0.0)  # nobody subscribed: nothing to measure
    tracker.subscribed("n1")
    tracker.subscribed("n2")
    tracker.committed(2, 10.0)
    tracker.committed(3, 11.0)
    assert tracker.acked("n1", 3, 12.0) == 0
    assert tracker.acked("n2", 2, 12.5) == 1 and observed == [2.5]
    tracker.unsubscribed("n2", 13.0)  # the slow node left: version 3 is complete
    assert observed == [2.5, 2.0]


def test_change_objects_are_value_types() -> None:
    assert Change((Kind.NODE, "n"), NodeState("n")) == Change((Kind.NODE, "n"), NodeState("n"))


# --- policy verdicts and state building -----------------------------------------------------
def _policy(spec: dict, name: str = "p") -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "default", "uid": name,
                         "resourceVersion": "1"}, "spec": spec}


def test_check_policy_names_field_and_reason() -> None:
    assert check_policy(_policy({"podSelector": {}})).valid
    verdict = check_policy(_policy({"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}))
    assert not verdict.valid
    assert "spec.ingress[0].from[0].ipBlock.cidr" in verdict.message


def test_build_state_needs_a_known_identity() -> None:
    ns = {"metadata": {"name": "default"}}
    node = {"metadata": {"name": "n1", "annotations": {"membrane.io/pod-cidr": "10.200.3.0/24"}},
            "status": {"addresses": [{"type": "Hostname", "address": "n1"},
                                     {"type": "ExternalIP", "address": "203.0.113.1"},
                                     {"type": "InternalIP", "address": "192.0.2.1"}]}}
    pod = {"metadata": {"name": "a", "namespace": "default", "uid": "u",
                        "labels": {"app": "web", "pod-template-hash": "123"}},
           "spec": {"nodeName": "n1", "containers": [
               {"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
           "status": {"podIP": "10.200.3.7"}}
    identity = {"metadata": {"name": "300"}, "securityLabels": {
        "k8s:app": "web", "meta:namespace": "default",
        "ns:kubernetes.io/metadata.name": "default"}}
    without = build_state([ns], [node], [pod], [], [])
    assert (Kind.ENDPOINT, "default/a") not in without
    state = build_state([ns], [node], [pod], [_policy({})], [identity])
    endpoint = state[(Kind.ENDPOINT, "default/a")]
    assert isinstance(endpoint, EndpointState)
    assert endpoint.identity == 300 and endpoint.labels == (("app", "web"),)
    assert endpoint.named_ports[0].port == 8080
    assert state[(Kind.NODE, "n1")] == NodeState("n1", ("192.0.2.1", "203.0.113.1"),
                                                "10.200.3.0/24")
    assert (Kind.POLICY, "default/p") in state


# --- generated files ------------------------------------------------------------------------
def test_crd_yaml_in_sync() -> None:
    for crd in CRDS:
        assert (ROOT / "deploy/crds" / crd_file_name(crd)).read_text() == crd_yaml(crd)
