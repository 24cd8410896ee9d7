"""Flat LPM policy map entries: port prefixes, default allow, covering rules, deny precedence,
and agreement of the datapath model (`lookup_flat`) with `trace` on the desired state."""

from __future__ import annotations

import random

import pytest

from membrane.identities import IDENTITY_ANY
from membrane.k8s_models import NamedPort, NetworkPolicy, ObjectRef, parse_object
from membrane.policy import (
    NOT_ISOLATED,
    Direction,
    EndpointPolicy,
    FlatKey,
    FlatValue,
    NamespaceInfo,
    PodInfo,
    PolicyKey,
    PolicyValue,
    Protocol,
    RuleRef,
    RuleTable,
    Verdict,
    compute_policy,
    flat_diff,
    flatten,
    flatten_endpoint,
    lookup_flat,
    port_range_prefixes,
    trace,
)

R1 = RuleRef(ObjectRef("ns", "p1"), Direction.INGRESS, 0)
R2 = RuleRef(ObjectRef("ns", "p2"), Direction.INGRESS, 1)


def expand(blocks: list[tuple[int, int]]) -> list[int]:
    return [p for start, prefix in blocks for p in range(start, start + (1 << (16 - prefix)))]


def covers_exactly(blocks: list[tuple[int, int]], start: int, end: int) -> bool:
    """Blocks are contiguous, in order, aligned, and span exactly [start, end]."""
    at = start
    for port, prefix in blocks:
        size = 1 << (16 - prefix)
        if port != at or port % size:
            return False
        at += size
    return at == end + 1


@pytest.mark.parametrize(
    ("start", "end", "count"),
    [(80, 80, 1), (0, 65535, 1), (1, 65535, 16), (32000, 32768, 3), (1024, 2047, 1), (5, 6, 2)],
)
def test_port_range_prefixes(start: int, end: int, count: int) -> None:
    blocks = port_range_prefixes(start, end)
    assert expand(blocks) == list(range(start, end + 1))
    assert len(blocks) == count
    for port, prefix in blocks:
        assert port % (1 << (16 - prefix)) == 0  # aligned


def test_random_ranges_cover_exactly_and_stay_small() -> None:
    rng = random.Random(1)
    for _ in range(300):
        a, b = sorted((rng.randint(0, 65535), rng.randint(0, 65535)))
        blocks = port_range_prefixes(a, b)
        assert covers_exactly(blocks, a, b) and len(blocks) <= 30
    with pytest.raises(ValueError):
        port_range_prefixes(10, 9)


def test_open_endpoint_gets_allow_all_with_not_isolated_ref() -> None:
    table = RuleTable()
    flat = flatten_endpoint(7, EndpointPolicy(), table)
    assert flat == {
        FlatKey(7, IDENTITY_ANY, Direction.INGRESS, 0, 0, 0): FlatValue(Verdict.ALLOW, NOT_ISOLATED),
        FlatKey(7, IDENTITY_ANY, Direction.EGRESS, 0, 0, 0): FlatValue(Verdict.ALLOW, NOT_ISOLATED),
    }
    assert all(k.prefixlen == 72 for k in flat)
    assert table.describe(NOT_ISOLATED) == ["no policy selects the endpoint in this direction"]


def test_isolated_endpoint_without_rules_has_no_entries_for_that_direction() -> None:
    ep = EndpointPolicy({}, {Direction.INGRESS: frozenset({R1.policy})})
    flat = flatten_endpoint(1, ep, RuleTable())
    assert [k.direction for k in flat] == [Direction.EGRESS]
    assert lookup_flat(flat, 1, Direction.INGRESS, 300, Protocol.TCP, 80) is None


def test_ranges_become_prefix_keys_and_covering_rules_are_merged() -> None:
    ep = EndpointPolicy(
        {
            PolicyKey(Direction.INGRESS, 300, Protocol.TCP, 80, 81): PolicyValue(Verdict.ALLOW, frozenset({R1})),
            PolicyKey(Direction.INGRESS, 300, Protocol.TCP, 80, 80): PolicyValue(Verdict.ALLOW, frozenset({R2})),
        },
        {Direction.INGRESS: frozenset({R1.policy, R2.policy})},
    )
    table = RuleTable()
    flat = flatten_endpoint(1, ep, table)
    k80 = FlatKey(1, 300, Direction.INGRESS, Protocol.TCP, 80, 16)
    k80_81 = FlatKey(1, 300, Direction.INGRESS, Protocol.TCP, 80, 15)
    assert k80.prefixlen == 96 and k80_81.prefixlen == 95
    assert table.lookup(flat[k80].rule_ref) == {R1, R2}
    assert table.lookup(flat[k80_81].rule_ref) == {R1}
    assert table.policies(flat[k80].rule_ref) == {R1.policy, R2.policy}
    hit = lookup_flat(flat, 1, Direction.INGRESS, 300, Protocol.TCP, 80)
    assert hit is not None and table.describe(hit.rule_ref) == [str(R1), str(R2)]
    assert lookup_flat(flat, 1, Direction.INGRESS, 300, Protocol.TCP, 82) is None
    assert lookup_flat(flat, 1, Direction.INGRESS, 301, Protocol.TCP, 80) is None
    assert lookup_flat(flat, 1, Direction.INGRESS, 300, Protocol.UDP, 80) is None


def test_deny_takes_precedence_over_more_specific_allow_and_wildcard() -> None:
    deny = PolicyValue(Verdict.DENY, frozenset({R2}))
    allow = PolicyValue(Verdict.ALLOW, frozenset({R1}))
    ep = EndpointPolicy(
        {
            PolicyKey(Direction.INGRESS, 300, Protocol.TCP, 0, 1023): deny,
            PolicyKey(Direction.INGRESS, 300, Protocol.TCP, 80, 80): allow,
            PolicyKey(Direction.INGRESS, IDENTITY_ANY, Protocol.ANY): allow,
            PolicyKey(Direction.INGRESS, IDENTITY_ANY, Protocol.UDP, 53, 53): deny,
        },
        {Direction.INGRESS: frozenset({R1.policy})},
    )
    table = RuleTable()
    flat = flatten_endpoint(1, ep, table)
    v = lookup_flat(flat, 1, Direction.INGRESS, 300, Protocol.TCP, 80)
    assert v is not None and v.verdict == Verdict.DENY and table.lookup(v.rule_ref) == {R2}
    v = lookup_flat(flat, 1, Direction.INGRESS, 300, Protocol.TCP, 2000)
    assert v is not None and v.verdict == Verdict.ALLOW  # via the wildcard identity
    v = lookup_flat(flat, 1, Direction.INGRESS, 300, Protocol.UDP, 53)
    assert v is not None and v.verdict == Verdict.DENY  # wildcard deny beats nothing/allow


def test_cidr_identity_is_judged_alongside_the_peer_identity() -> None:
    """The CIDR identity of the peer's address counts like a third identity: its ALLOW allows,
    its DENY beats an ALLOW of the peer's identity, and "any peer" still applies."""
    cidr, other_cidr = (1 << 24) | 1, (1 << 24) | 2
    deny = PolicyValue(Verdict.DENY, frozenset({R2}))
    allow = PolicyValue(Verdict.ALLOW, frozenset({R1}))
    ep = EndpointPolicy(
        {
            PolicyKey(Direction.EGRESS, cidr, Protocol.TCP, 80, 80): allow,
            PolicyKey(Direction.EGRESS, 300, Protocol.TCP, 443, 443): allow,
            PolicyKey(Direction.EGRESS, other_cidr, Protocol.TCP, 443, 443): deny,
        },
        {Direction.EGRESS: frozenset({R1.policy})},
    )
    flat = flatten_endpoint(1, ep, RuleTable())
    assert lookup_flat(flat, 1, Direction.EGRESS, 300, Protocol.TCP, 80) is None  # no CIDR identity given
    hit = lookup_flat(flat, 1, Direction.EGRESS, 300, Protocol.TCP, 80, cidr)
    assert hit is not None and hit.verdict == Verdict.ALLOW
    assert lookup_flat(flat, 1, Direction.EGRESS, 300, Protocol.TCP, 80, other_cidr) is None
    assert lookup_flat(flat, 1, Direction.EGRESS, cidr, Protocol.TCP, 80, cidr).verdict == Verdict.ALLOW  # type: ignore[union-attr]
    hit = lookup_flat(flat, 1, Direction.EGRESS, 300, Protocol.TCP, 443, other_cidr)
    assert hit is not None and hit.verdict == Verdict.DENY  # the address is excepted: deny wins
    hit = lookup_flat(flat, 1, Direction.EGRESS, 300, Protocol.TCP, 443, cidr)
    assert hit is not None and hit.verdict == Verdict.ALLOW


def test_same_key_allow_and_deny_merge_to_deny() -> None:
    a = PolicyValue(Verdict.ALLOW, frozenset({R1}))
    d = PolicyValue(Verdict.DENY, frozenset({R2}))
    assert a.merged(d) == d and d.merged(a) == d
    assert a.merged(PolicyValue(Verdict.ALLOW, frozenset({R2}))).rules == {R1, R2}


def test_rule_table_round_trip_and_retain() -> None:
    table = RuleTable()
    one = table.intern(frozenset({R1}))
    two = table.intern(frozenset({R1, R2}))
    assert table.intern(frozenset({R1})) == one and one != two
    restored = RuleTable.from_dict(table.to_dict())
    assert restored.lookup(two) == {R1, R2}
    assert restored.intern(frozenset({R2})) == table.intern(frozenset({R2}))
    table.retain([two])
    assert table.lookup(one) == frozenset() and table.lookup(two) == {R1, R2}
    assert table.intern(frozenset({R1})) not in (one, two)  # numbers not reused


def test_flatten_only_local_endpoints_and_diff() -> None:
    ns = NamespaceInfo.of("ns")
    pods = [PodInfo(ObjectRef("ns", "a"), {"app": "a"}, 300), PodInfo(ObjectRef("ns", "b"), {"app": "b"}, 301)]
    desired = compute_policy([ns], pods, [])
    table = RuleTable()
    flat = flatten(desired, {ObjectRef("ns", "a"): 5}, table)
    assert {k.endpoint_id for k in flat} == {5}
    assert not flat_diff(flat, flat)
    delta = flat_diff(flatten(desired, {ObjectRef("ns", "b"): 6}, table), flat)
    assert set(delta.deletes) == set(flat) and len(delta.upserts) == 2


# --- the datapath model agrees with trace on random policies -----------------------------


def _random_policy(rng: random.Random, i: int) -> NetworkPolicy:
    def peer() -> dict[str, object]:
        kind = rng.randrange(4)
        if kind == 0:
            return {"podSelector": {"matchLabels": {"app": rng.choice("abc")}}}
        if kind == 1:
            return {"namespaceSelector": {"matchLabels": {"team": rng.choice("xy")}}}
        if kind == 2:
            return {"ipBlock": rng.choice([  # outside the pods, around them, a pod's /32, everything
                {"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]},
                {"cidr": "10.0.0.0/29", "except": [f"10.0.0.{rng.randint(1, 6)}/32"]},
                {"cidr": f"10.0.0.{rng.randint(1, 6)}/32"},
                {"cidr": "0.0.0.0/0", "except": [f"10.0.0.{rng.randint(1, 6)}/31"]},
            ])}
        return {"namespaceSelector": {}, "podSelector": {"matchExpressions": [
            {"key": "app", "operator": "NotIn", "values": [rng.choice("abc")]}]}}

    def port() -> dict[str, object]:
        kind = rng.randrange(4)
        if kind == 0:
            return {"port": rng.choice([80, 443, 8080])}
        if kind == 1:
            start = rng.randint(1000, 1100)
            return {"port": start, "endPort": start + rng.randint(0, 300), "protocol": rng.choice(["TCP", "UDP"])}
        if kind == 2:
            return {"port": "http"}
        return {"protocol": "UDP"}

    def rule(key: str) -> dict[str, object]:
        r: dict[str, object] = {}
        if rng.random() < 0.7:
            r[key] = [peer() for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.7:
            r["ports"] = [port() for _ in range(rng.randint(1, 2))]
        return r

    spec: dict[str, object] = {"podSelector": rng.choice([{}, {"matchLabels": {"app": rng.choice("abc")}}])}
    if rng.random() < 0.8:
        spec["ingress"] = [rule("from") for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.6:
        spec["egress"] = [rule("to") for _ in range(rng.randint(0, 2))]
        spec["policyTypes"] = ["Ingress", "Egress"] if rng.random() < 0.5 else ["Egress"]
    np = parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": f"p{i}", "namespace": rng.choice(["n1", "n2"])}, "spec": spec})
    assert isinstance(np, NetworkPolicy)
    return np


def test_flat_lookup_agrees_with_trace_on_random_worlds() -> None:
    rng = random.Random(11)
    for _ in range(6):
        namespaces = [NamespaceInfo.of("n1", {"team": "x"}), NamespaceInfo.of("n2", {"team": "y"})]
        pods = []
        for j in range(6):
            app = rng.choice("abc")
            ns = rng.choice(["n1", "n2"])
            ports = (NamedPort("http", "TCP", rng.choice([80, 8080, 1050])),)
            pods.append(PodInfo(ObjectRef(ns, f"pod{j}"), {"app": app}, 300 + ("abc".index(app)) + 10 * (ns == "n2"),
                                (f"10.0.0.{j + 1}",), ports))
        policies = [_random_policy(rng, i) for i in range(rng.randint(1, 4))]
        desired = compute_policy(namespaces, pods, policies)
        ids = {pod.ref: n + 1 for n, pod in enumerate(pods)}
        flat = flatten(desired, ids, RuleTable())
        by_ref = {p.ref: p for p in pods}
        others = [p.ref for p in pods] + ["198.51.100.7", "198.51.100.200", "8.8.8.8"]
        for src in pods:
            for dst in others:
                for proto, port in (("TCP", 80), ("TCP", 8080), ("TCP", 1050), ("UDP", 1080), ("UDP", 9), ("SCTP", 80)):
                    t = trace(desired, by_ref, src.ref, dst, port, proto)
                    out = lookup_flat(flat, ids[src.ref], Direction.EGRESS, t.dst.identity or 0, Protocol[proto], port,
                                      t.dst.cidr_identity)
                    assert (out is not None and out.verdict == Verdict.ALLOW) == (t.egress.verdict is Verdict.ALLOW)
                    if t.dst.pod is not None:
                        into = lookup_flat(flat, ids[t.dst.pod.ref], Direction.INGRESS, src.identity or 0, Protocol[proto],
                                           port, t.src.cidr_identity)
                        assert (into is not None and into.verdict == Verdict.ALLOW) == (t.ingress.verdict is Verdict.ALLOW)
