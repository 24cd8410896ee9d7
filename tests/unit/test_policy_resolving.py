"""Incremental PolicyResolver: every order of the same updates reaches the from-scratch state,
and the deltas it returns, applied in sequence, rebuild exactly that state."""

from __future__ import annotations

import itertools
import random
from typing import Any

from membrane.identities import IdentityAllocator, identity_labels
from membrane.k8s_models import NamedPort, NetworkPolicy, ObjectRef, parse_object
from membrane.policy import (
    DesiredPolicy,
    Direction,
    NamespaceInfo,
    PodInfo,
    PolicyDelta,
    PolicyKey,
    PolicyResolver,
    PolicyValue,
    compute_policy,
)

Mirror = dict[ObjectRef, tuple[dict[PolicyKey, PolicyValue], dict[Direction, frozenset[ObjectRef]]]]


class Harness:
    """Drives a resolver and mirrors the map contents from its deltas only."""

    def __init__(self) -> None:
        self.resolver = PolicyResolver()
        self.identities = IdentityAllocator()
        self.mirror: Mirror = {}
        self.cidrs: dict[str, int] = {}

    def _apply(self, delta: PolicyDelta) -> None:
        self.cidrs.update(delta.cidr_upserts)
        for prefix in delta.cidr_removals:
            del self.cidrs[prefix]
        for ref, change in delta.endpoints.items():
            if change.deleted:
                del self.mirror[ref]
                continue
            entries, selected = self.mirror.get(ref, ({}, {}))
            entries = {k: v for k, v in entries.items() if k not in change.removals}
            entries.update(change.upserts)
            if change.selected_by is not None:
                selected = dict(change.selected_by)
            self.mirror[ref] = (entries, selected)

    def ns(self, name: str, **labels: str) -> PolicyDelta:
        delta = self.resolver.on_update(NamespaceInfo.of(name, labels))
        self._apply(delta)
        # Namespace labels are part of identities: the operator re-derives pods' identities.
        for pod in list(self.resolver.inputs.pods_in(name).values()):
            self.pod(str(pod.ref), pod.ips[0] if pod.ips else None, pod.named_ports, **pod.labels)
        return delta

    def pod(self, ref: str, ip: str | None = "10.0.0.1",
            ports: tuple[NamedPort, ...] = (NamedPort("http", "TCP", 8080),), **labels: str) -> PolicyDelta:
        key = ObjectRef.parse(ref)
        ident = self.identities.acquire(
            identity_labels(labels, key.namespace, self.resolver.inputs.namespace_labels(key.namespace)), ref)
        delta = self.resolver.on_update(PodInfo(key, labels, ident, (ip,) if ip else (), ports))
        self._apply(delta)
        return delta

    def delete_pod(self, ref: str) -> PolicyDelta:
        delta = self.resolver.delete_pod(ObjectRef.parse(ref))
        self._apply(delta)
        return delta

    def policy(self, ref: str, spec: dict[str, Any]) -> PolicyDelta:
        key = ObjectRef.parse(ref)
        np = parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": key.name, "namespace": key.namespace}, "spec": spec})
        assert isinstance(np, NetworkPolicy)
        delta = self.resolver.on_update(np)
        self._apply(delta)
        return delta

    def delete_policy(self, ref: str) -> PolicyDelta:
        delta = self.resolver.delete_policy(ObjectRef.parse(ref))
        self._apply(delta)
        return delta

    def from_scratch(self) -> DesiredPolicy:
        inputs = self.resolver.inputs
        # Same CIDR numbering as the resolver: restore its allocator state (as after a restart).
        alloc = IdentityAllocator.from_dict(self.resolver.cidrs.allocator.to_dict())
        return compute_policy(inputs.namespaces.values(), inputs.pods.values(), inputs.policies.values(), alloc)

    def check(self) -> DesiredPolicy:
        desired = self.resolver.desired()
        scratch = self.from_scratch()
        assert desired == scratch
        assert self.cidrs == dict(desired.cidr_identities)
        assert self.mirror == {
            ref: (dict(ep.entries), dict(ep.selected_by)) for ref, ep in desired.endpoints.items()
        }
        return desired


def canonical(h: Harness, desired: DesiredPolicy) -> Any:
    """Map contents with identities replaced by what they stand for: numbering depends on the
    order things were first seen, the meaning must not."""
    names = {ident: prefix for prefix, ident in desired.cidr_identities.items()}

    def name(identity: int) -> str:
        labels = h.identities.labels_of(identity)
        return names.get(identity) or (str(labels) if labels else str(identity))

    return {
        ref: (
            sorted(((k.direction, name(k.identity), k.protocol, k.port_start, k.port_end),
                    v.verdict, tuple(sorted(v.rules))) for k, v in ep.entries.items()),
            dict(ep.selected_by),
        )
        for ref, ep in desired.endpoints.items()
    }


WEB_IN = {"podSelector": {"matchLabels": {"app": "web"}},
          "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}},
                                {"namespaceSelector": {"matchLabels": {"team": "ops"}}}],
                       "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100}]}]}
CLIENT_OUT = {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
              "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "http"}]},
                         {"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}
EXTERNAL = {"podSelector": {}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.1.2.0/24"}}]}]}

STEPS: dict[str, Any] = {
    "ns-prod": lambda h: h.ns("prod", team="dev"),
    "ns-ops": lambda h: h.ns("ops", team="ops"),
    "web": lambda h: h.pod("prod/web", "10.0.0.1", (NamedPort("http", "TCP", 8080),), app="web"),
    "client": lambda h: h.pod("prod/client", "10.0.0.2", app="client"),
    "monitor": lambda h: h.pod("ops/monitor", "10.0.1.2", app="monitor"),
    "web-in": lambda h: h.policy("prod/web-in", WEB_IN),
    "client-out": lambda h: h.policy("prod/client-out", CLIENT_OUT),
    "external": lambda h: h.policy("prod/external", EXTERNAL),
}


def test_every_order_of_the_same_updates_gives_the_same_map_contents() -> None:
    names = ["ns-prod", "web", "client", "web-in", "client-out", "external"]
    orders = list(itertools.permutations(names))
    # A fixed sample of the 720 orders keeps this fast; each intermediate state is checked too.
    sample = [orders[0], orders[-1], *random.Random(3).sample(orders, 40)]
    results = []
    for order in sample:
        h = Harness()
        for name in order:
            STEPS[name](h)
            h.check()
        results.append(canonical(h, h.check()))
    assert all(r == results[0] for r in results)


def _final(steps: list[Any]) -> Any:
    h = Harness()
    for step in steps:
        step(h)
        h.check()
    return canonical(h, h.check())


def test_add_then_relabel_equals_relabel_then_add() -> None:
    a = _final([STEPS["web-in"], STEPS["web"],
                lambda h: h.pod("prod/client", "10.0.0.2", app="other"),
                lambda h: h.pod("prod/client", "10.0.0.2", app="client")])
    b = _final([lambda h: h.pod("prod/client", "10.0.0.2", app="client"), STEPS["web"], STEPS["web-in"]])
    assert a == b


def test_namespace_relabel_reaches_the_same_state() -> None:
    a = _final([STEPS["web"], STEPS["monitor"], STEPS["web-in"],
                lambda h: h.ns("ops", team="nobody"), lambda h: h.ns("ops", team="ops")])
    b = _final([lambda h: h.ns("ops", team="ops"), STEPS["monitor"], STEPS["web"], STEPS["web-in"]])
    assert a == b
    c = _final([lambda h: h.ns("ops", team="nobody"), STEPS["monitor"], STEPS["web"], STEPS["web-in"]])
    assert c != a  # and the relabel really matters


def test_policy_before_pods_equals_pods_before_policy_and_deletes_undo() -> None:
    a = _final([STEPS["client-out"], STEPS["external"], STEPS["web"], STEPS["client"]])
    b = _final([STEPS["web"], STEPS["client"], STEPS["client-out"], STEPS["external"]])
    assert a == b
    h = Harness()
    for name in ["web", "client", "client-out", "external"]:
        STEPS[name](h)
    h.delete_policy("prod/client-out")
    h.delete_policy("prod/external")
    h.check()
    assert h.cidrs == {}
    assert canonical(h, h.check()) == _final([STEPS["web"], STEPS["client"]])


def test_deltas_are_minimal() -> None:
    h = Harness()
    STEPS["web"](h)
    STEPS["client"](h)
    STEPS["web-in"](h)
    # Same pod again: nothing.
    assert not STEPS["web"](h)
    # A pod nothing selects and no peer matches: only its own (new, open) endpoint.
    delta = h.pod("prod/batch", "10.0.0.9", app="batch")
    assert set(delta.endpoints) == {ObjectRef("prod", "batch")}
    assert delta.endpoints[ObjectRef("prod", "batch")].selected_by == {}
    # A new client: web's ingress entries change (new identity? no: same labels, same identity).
    delta = h.pod("prod/client-2", "10.0.0.10", app="client")
    assert set(delta.endpoints) == {ObjectRef("prod", "client-2")}
    # Changing the named port of web changes web only.
    delta = h.pod("prod/web", "10.0.0.1", (NamedPort("http", "TCP", 8081),), app="web")
    assert set(delta.endpoints) == {ObjectRef("prod", "web")}
    change = delta.endpoints[ObjectRef("prod", "web")]
    assert {k.port_start for k in change.upserts} == {8081} and {k.port_start for k in change.removals} == {8080}
    h.check()


def test_egress_named_port_follows_peer_pod_changes() -> None:
    h = Harness()
    STEPS["web"](h)
    STEPS["client"](h)
    STEPS["client-out"](h)
    delta = h.pod("prod/web", "10.0.0.1", (NamedPort("http", "TCP", 7070),), app="web")
    assert ObjectRef("prod", "client") in delta.endpoints
    entries = h.check().endpoints[ObjectRef("prod", "client")].entries
    assert any(k.port_start == 7070 for k in entries) and not any(k.port_start == 8080 for k in entries)
    h.delete_pod("prod/web")
    h.check()


def test_new_cidr_prefix_updates_other_policies_ipblock_selection() -> None:
    h = Harness()
    STEPS["client"](h)
    STEPS["client-out"](h)  # 10/8 except 10.1/16
    delta = h.policy("prod/wide", {"podSelector": {"matchLabels": {"app": "nobody"}}, "policyTypes": ["Egress"],
                                   "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}]}]})
    # client-out's 10/8 must now also allow the new 10.2/16 identity.
    assert ObjectRef("prod", "client") in delta.endpoints and "10.2.0.0/16" in delta.cidr_upserts
    h.check()
    delta = h.delete_policy("prod/wide")
    assert ObjectRef("prod", "client") in delta.endpoints and "10.2.0.0/16" in delta.cidr_removals
    h.check()


def test_pod_deletion_and_host_network_switch_remove_the_endpoint() -> None:
    h = Harness()
    STEPS["web"](h)
    STEPS["web-in"](h)
    delta = h.resolver.on_update(PodInfo(ObjectRef("prod", "web"), {"app": "web"}, 999, (), (), True))
    h._apply(delta)
    assert delta.endpoints[ObjectRef("prod", "web")].deleted
    h.check()
    STEPS["web"](h)
    delta = h.delete_pod("prod/web")
    assert delta.endpoints[ObjectRef("prod", "web")].deleted
    assert h.check().endpoints == {}


def test_resync_after_full_state_is_a_no_op() -> None:
    h = Harness()
    for name in STEPS:
        STEPS[name](h)
    assert not h.resolver.resync()


def _random_spec(rng: random.Random) -> dict[str, Any]:
    def peer() -> dict[str, Any]:
        return rng.choice([
            {"podSelector": {"matchLabels": {"app": rng.choice("abc")}}},
            {"namespaceSelector": {"matchLabels": {"team": rng.choice("xy")}}},
            {"namespaceSelector": {"matchLabels": {"team": rng.choice("xy")}},
             "podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": [rng.choice("abc")]}]}},
            {"ipBlock": {"cidr": rng.choice(["10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/0"]),
                         "except": rng.choice([[], ["10.1.2.0/24"]])}},
        ])

    def rule(key: str) -> dict[str, Any]:
        r: dict[str, Any] = {}
        if rng.random() < 0.7:
            r[key] = [peer() for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.6:
            r["ports"] = [rng.choice([{"port": "http"}, {"port": 80}, {"port": 1000, "endPort": 1010}])]
        return r

    spec: dict[str, Any] = {"podSelector": rng.choice([{}, {"matchLabels": {"app": rng.choice("abc")}}])}
    spec["ingress"] = [rule("from") for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.5:
        spec["egress"] = [rule("to") for _ in range(rng.randint(1, 2))]
    return spec


def test_random_update_sequences_always_match_from_scratch() -> None:
    for seed in range(15):
        rng = random.Random(seed)
        h = Harness()
        for _ in range(40):
            op = rng.randrange(6)
            ns = rng.choice(["n1", "n2", "n3"])
            if op == 0:
                h.ns(ns, team=rng.choice("xyz"))
            elif op in (1, 2):
                port = rng.choice([80, 8080, 1005])
                h.pod(f"{ns}/p{rng.randrange(5)}", f"10.{rng.randrange(3)}.2.{rng.randrange(9)}",
                      (NamedPort("http", "TCP", port),), app=rng.choice("abc"))
            elif op == 3:
                h.delete_pod(f"{ns}/p{rng.randrange(5)}")
            elif op == 4:
                h.policy(f"{ns}/np{rng.randrange(3)}", _random_spec(rng))
            else:
                h.delete_policy(f"{ns}/np{rng.randrange(3)}")
            h.check()
