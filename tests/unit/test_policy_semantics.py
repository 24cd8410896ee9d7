"""NetworkPolicy semantics, point by point, judged through the engine output and `trace`."""

from __future__ import annotations

from typing import Any

from membrane.identities import IDENTITY_ANY, IdentityAllocator, ReservedIdentity, identity_labels
from membrane.k8s_models import NamedPort, NetworkPolicy, ObjectRef, parse_object
from membrane.labels import namespace_labels
from membrane.policy import (
    DesiredPolicy,
    Direction,
    NamespaceInfo,
    PodInfo,
    PolicyKey,
    Protocol,
    RuleRef,
    Verdict,
    compute_policy,
    trace,
)

WEB_PORTS = (NamedPort("http", "TCP", 8080), NamedPort("dns", "UDP", 53))


class World:
    """A small cluster: identities derived from labels exactly like the operator does."""

    def __init__(self) -> None:
        self.alloc = IdentityAllocator()
        self.namespaces: dict[str, NamespaceInfo] = {}
        self.pods: dict[ObjectRef, PodInfo] = {}
        self.policies: dict[ObjectRef, NetworkPolicy] = {}

    def ns(self, name: str, **labels: str) -> None:
        self.namespaces[name] = NamespaceInfo.of(name, labels)

    def pod(
        self,
        ref: str,
        ip: str | None = None,
        ports: tuple[NamedPort, ...] = WEB_PORTS,
        host_network: bool = False,
        identity: int | bool | None = True,
        **labels: str,
    ) -> PodInfo:
        key = ObjectRef.parse(ref)
        ns_labels = self.namespaces[key.namespace].labels if key.namespace in self.namespaces else {}
        ident = (
            self.alloc.acquire(identity_labels(labels, key.namespace, ns_labels), ref)
            if identity is True
            else (None if identity is False else identity)
        )
        info = PodInfo(key, labels, ident, (ip,) if ip else (), ports, host_network)
        self.pods[key] = info
        return info

    def policy(self, ref: str, spec: dict[str, Any]) -> NetworkPolicy:
        key = ObjectRef.parse(ref)
        np = parse_object(
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": key.name, "namespace": key.namespace}, "spec": spec}
        )
        assert isinstance(np, NetworkPolicy)
        self.policies[key] = np
        return np

    def desired(self) -> DesiredPolicy:
        return compute_policy(self.namespaces.values(), self.pods.values(), self.policies.values())

    def allowed(self, src: str, dst: str, port: int | str, proto: str = "TCP") -> bool:
        return trace(self.desired(), self.pods, src, dst, port, proto).verdict is Verdict.ALLOW


def base() -> World:
    w = World()
    w.ns("prod", team="a")
    w.ns("dev", team="b")
    w.pod("prod/web", "10.0.0.1", app="web")
    w.pod("prod/client", "10.0.0.2", app="client")
    w.pod("dev/client", "10.0.1.2", app="client")
    w.pod("prod/db", "10.0.0.3", app="db")
    return w


ALL_FROM_CLIENT = {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}


def test_no_policy_everything_open() -> None:
    w = base()
    d = w.desired()
    assert d.isolated(Direction.INGRESS) == set() and d.isolated(Direction.EGRESS) == set()
    assert w.allowed("prod/client", "prod/web", 1234, "UDP")
    assert w.allowed("203.0.113.9", "prod/web", 80)
    assert w.allowed("prod/web", "203.0.113.9", 443)


def test_ingress_policy_isolates_only_ingress_of_selected_pods() -> None:
    w = base()
    w.policy("prod/web", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [ALL_FROM_CLIENT]})
    d = w.desired()
    assert d.isolated(Direction.INGRESS) == {ObjectRef("prod", "web")}
    assert d.isolated(Direction.EGRESS) == set()
    assert w.allowed("prod/client", "prod/web", 80)
    assert not w.allowed("prod/db", "prod/web", 80)
    assert w.allowed("prod/web", "prod/db", 5432)  # egress of web still open
    assert w.allowed("prod/db", "prod/client", 80)  # client not selected


def test_isolation_applies_to_every_protocol() -> None:
    w = base()
    w.policy("prod/tcp80", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})
    assert w.allowed("prod/client", "prod/web", 80)
    assert not w.allowed("prod/client", "prod/web", 53, "UDP")
    assert not w.allowed("prod/client", "prod/web", 80, "SCTP")


def test_empty_ingress_denies_all_and_empty_rule_allows_all() -> None:
    w = base()
    w.policy("prod/deny", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": []})
    assert not w.allowed("prod/client", "prod/web", 80)
    assert not w.allowed("198.51.100.1", "prod/web", 80)
    w.policy("prod/allow", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]})
    assert w.allowed("prod/client", "prod/web", 80)
    assert w.allowed("198.51.100.1", "prod/web", 9, "SCTP")
    entries = w.desired().endpoints[ObjectRef("prod", "web")].entries
    assert list(entries) == [PolicyKey(Direction.INGRESS, IDENTITY_ANY, Protocol.ANY)]


def test_egress_deny_all_and_allow_all() -> None:
    w = base()
    w.policy("prod/deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
    assert not w.allowed("prod/web", "prod/db", 5432)
    assert not w.allowed("prod/web", "8.8.8.8", 53, "UDP")
    assert w.allowed("dev/client", "prod/web", 80)  # ingress not isolated
    w.policy("prod/allow-egress", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]})
    assert w.allowed("prod/web", "8.8.8.8", 53, "UDP")


def test_policy_types_default_ingress_always_egress_when_rules() -> None:
    w = base()
    # Only egress rules, no policyTypes: Ingress is still implied -> ingress denied.
    w.policy("prod/eg", {"podSelector": {"matchLabels": {"app": "web"}}, "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]})
    assert not w.allowed("prod/client", "prod/web", 80)
    assert w.allowed("prod/web", "prod/db", 5432)
    assert not w.allowed("prod/web", "prod/client", 80)


def test_explicit_policy_types_ignore_rules_of_other_direction() -> None:
    w = base()
    w.policy("prod/eg", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"],
                         "ingress": [ALL_FROM_CLIENT], "egress": []})
    d = w.desired()
    assert d.isolated(Direction.INGRESS) == set()
    assert d.isolated(Direction.EGRESS) == {ObjectRef("prod", "web")}
    assert w.allowed("prod/db", "prod/web", 80)  # ingress rule ignored: ingress open
    assert not w.allowed("prod/web", "prod/db", 80)


def test_egress_empty_list_does_not_imply_egress_type() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {}, "egress": []})
    assert w.desired().isolated(Direction.EGRESS) == set()


def test_rules_and_policies_add_up() -> None:
    w = base()
    sel = {"matchLabels": {"app": "web"}}
    w.policy("prod/a", {"podSelector": sel, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": 80}]}]})
    w.policy("prod/b", {"podSelector": sel, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]},
                                                        {"ports": [{"port": 443}]}]})
    assert w.allowed("prod/client", "prod/web", 80)
    assert not w.allowed("prod/client", "prod/web", 81)
    assert w.allowed("prod/db", "prod/web", 81)
    assert w.allowed("dev/client", "prod/web", 443)
    t = trace(w.desired(), w.pods, "prod/client", "prod/web", 80)
    assert t.ingress.selected_by == (ObjectRef("prod", "a"), ObjectRef("prod", "b"))
    assert t.ingress.rules == (RuleRef(ObjectRef("prod", "a"), Direction.INGRESS, 0),)


def test_pod_selector_alone_means_policy_namespace() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [ALL_FROM_CLIENT]})
    assert w.allowed("prod/client", "prod/web", 80)
    assert not w.allowed("dev/client", "prod/web", 80)


def test_empty_namespace_selector_means_all_namespaces() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}},
                        "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    assert w.allowed("dev/client", "prod/web", 80)
    assert w.allowed("prod/db", "prod/web", 80)
    assert not w.allowed("203.0.113.1", "prod/web", 80)  # pods only, not the world


def test_namespace_and_pod_selector_in_one_peer_is_and_separate_is_or() -> None:
    w = base()
    w.pod("dev/db", "10.0.1.3", app="db")
    w.policy("prod/and", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "b"}}, "podSelector": {"matchLabels": {"app": "client"}}}]}]})
    assert w.allowed("dev/client", "prod/web", 80)
    assert not w.allowed("dev/db", "prod/web", 80)
    assert not w.allowed("prod/client", "prod/web", 80)
    w.policy("prod/and", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"team": "b"}}}, {"podSelector": {"matchLabels": {"app": "client"}}}]}]})
    assert w.allowed("dev/client", "prod/web", 80)
    assert w.allowed("dev/db", "prod/web", 80)
    assert w.allowed("prod/client", "prod/web", 80)
    assert not w.allowed("prod/db", "prod/web", 80)


def test_namespace_name_label_is_always_there() -> None:
    w = base()
    w.pod("other/client", "10.0.2.2", app="client")  # namespace object never seen
    w.policy("prod/p", {"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}]}]})
    assert w.allowed("other/client", "prod/web", 80)
    assert not w.allowed("dev/client", "prod/web", 80)
    assert namespace_labels("x", {})["kubernetes.io/metadata.name"] == "x"


def test_match_expressions_in_peers() -> None:
    w = base()
    w.pod("prod/tagged", "10.0.0.9", app="client", env="test")
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
        {"podSelector": {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["test"]},
                                              {"key": "app", "operator": "In", "values": ["client", "db"]}]}}]}]})
    assert w.allowed("prod/client", "prod/web", 80)  # env absent: NotIn holds
    assert w.allowed("prod/db", "prod/web", 80)
    assert not w.allowed("prod/tagged", "prod/web", 80)


def test_ip_block_with_except() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}]}],
        "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]})
    assert w.allowed("192.168.2.1", "prod/web", 80)
    assert not w.allowed("192.168.1.7", "prod/web", 80)
    assert not w.allowed("172.16.0.1", "prod/web", 80)
    assert w.allowed("prod/web", "8.8.8.8", 53, "UDP")  # WORLD
    assert not w.allowed("prod/web", "10.99.0.1", 80)
    # Pod addresses are judged like any other: 10.0.0.2 is in no ingress block, in the egress except.
    assert not w.allowed("prod/client", "prod/web", 80)
    assert not w.allowed("prod/web", "prod/client", 80)


def test_ip_block_selects_pod_addresses() -> None:
    """Upstream semantics: an ipBlock matches pod IPs too (by address, whatever the pod's labels)."""
    w = base()
    w.pod("prod/other", "10.0.1.5", app="other")
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.0.0.0/24"}}]}]})
    assert w.allowed("10.0.0.77", "prod/web", 80)  # non-pod address in the block
    assert w.allowed("prod/client", "prod/web", 80)  # pod 10.0.0.2: in the block
    assert not w.allowed("prod/other", "prod/web", 80)  # pod 10.0.1.5: outside it
    t = trace(w.desired(), w.pods, "prod/client", "prod/web", 80)
    assert t.src.identity == w.pods[ObjectRef("prod", "client")].identity  # still the pod's identity
    assert t.src.cidr_identity == w.desired().cidr_identities["10.0.0.0/24"]
    assert "CIDR identity" in t.lines()[0]


def test_ip_block_except_excludes_a_pod_address() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.1/32"]}}]}]})
    assert not w.allowed("prod/client", "prod/web", 80)  # web is 10.0.0.1: excepted
    assert w.allowed("prod/client", "10.0.0.9", 80)
    # Another rule selecting the same pod by its own /32 wins (rules add up).
    w.policy("prod/q", {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]}]})
    assert w.allowed("prod/client", "prod/web", 80)


def test_ip_block_everything_selects_pods_without_a_prefix() -> None:
    """0.0.0.0/0 selects WORLD, which is the CIDR identity of addresses under no prefix, pods included."""
    w = base()
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.2/32"]}}]}]})
    w.pod("prod/third", "10.0.0.3", app="third")
    assert w.allowed("prod/third", "prod/web", 80)
    assert not w.allowed("prod/client", "prod/web", 80)
    assert w.allowed("203.0.113.1", "prod/web", 80)


def test_named_port_ingress_resolves_on_destination_pod() -> None:
    w = base()
    w.pod("prod/web2", "10.0.0.4", ports=(NamedPort("http", "TCP", 9090),), app="web")
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
        {"namespaceSelector": {}}], "ports": [{"port": "http"}]}]})
    assert w.allowed("prod/client", "prod/web", 8080)
    assert not w.allowed("prod/client", "prod/web", 9090)
    assert w.allowed("prod/client", "prod/web2", 9090)
    assert not w.allowed("prod/client", "prod/web2", 8080)
    assert w.allowed("prod/client", "prod/web2", "http")


def test_named_port_protocol_must_match() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [
        {"port": "dns"}]}]})  # dns is UDP on web; the rule means TCP
    assert not w.allowed("prod/client", "prod/web", 53, "UDP")
    assert not w.allowed("prod/client", "prod/web", 53, "TCP")
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [
        {"port": "dns", "protocol": "UDP"}]}]})
    assert w.allowed("prod/client", "prod/web", 53, "UDP")


def test_named_port_egress_resolves_per_peer_pod() -> None:
    w = base()
    w.pod("prod/api", "10.0.0.5", ports=(NamedPort("http", "TCP", 7000),), app="api")
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                        "egress": [{"to": [{"podSelector": {"matchExpressions": [
                            {"key": "app", "operator": "In", "values": ["web", "api"]}]}}],
                            "ports": [{"port": "http"}]}]})
    assert w.allowed("prod/client", "prod/web", 8080)
    assert w.allowed("prod/client", "prod/api", 7000)
    assert not w.allowed("prod/client", "prod/web", 7000)
    assert not w.allowed("prod/client", "prod/api", 8080)
    entries = w.desired().endpoints[ObjectRef("prod", "client")].entries
    web, api = w.pods[ObjectRef("prod", "web")].identity, w.pods[ObjectRef("prod", "api")].identity
    assert set(entries) == {PolicyKey(Direction.EGRESS, web, Protocol.TCP, 8080, 8080),  # type: ignore[arg-type]
                            PolicyKey(Direction.EGRESS, api, Protocol.TCP, 7000, 7000)}  # type: ignore[arg-type]


def test_named_port_egress_to_everyone_resolves_on_every_pod() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                        "egress": [{"ports": [{"port": "http"}]}]})
    assert w.allowed("prod/client", "prod/web", 8080)
    assert w.allowed("prod/client", "dev/client", 8080)
    assert not w.allowed("prod/client", "prod/web", 8081)
    assert not w.allowed("prod/client", "8.8.8.8", 8080)  # no named ports outside pods


def test_end_port_range_is_inclusive() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [
        {"port": 32000, "endPort": 32768}]}]})
    assert w.allowed("prod/client", "prod/web", 32000)
    assert w.allowed("prod/client", "prod/web", 32768)
    assert w.allowed("prod/client", "prod/web", 32500)
    assert not w.allowed("prod/client", "prod/web", 31999)
    assert not w.allowed("prod/client", "prod/web", 32769)


def test_port_without_protocol_is_tcp_and_sctp_udp_work() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [
        {"port": 53}, {"protocol": "SCTP", "port": 3868}, {"protocol": "UDP"}]}]})
    assert w.allowed("prod/client", "prod/web", 53, "TCP")
    assert w.allowed("prod/client", "prod/web", 3868, "SCTP")
    assert not w.allowed("prod/client", "prod/web", 3868, "TCP")
    assert w.allowed("prod/client", "prod/web", 12345, "UDP")  # protocol only: every UDP port


def test_rule_without_ports_allows_all_ports_and_protocols() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [ALL_FROM_CLIENT]})
    for proto, port in (("TCP", 1), ("UDP", 65535), ("SCTP", 9999)):
        assert w.allowed("prod/client", "prod/web", port, proto)


def test_egress_judged_at_source_and_ingress_at_destination() -> None:
    w = base()
    w.policy("prod/client-out", {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                                 "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]})
    w.policy("prod/web-in", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": []})
    t = trace(w.desired(), w.pods, "prod/client", "prod/web", 80)
    assert t.egress.verdict is Verdict.ALLOW and t.egress.endpoint == ObjectRef("prod", "client")
    assert t.ingress.verdict is Verdict.DENY and t.ingress.endpoint == ObjectRef("prod", "web")
    assert t.verdict is Verdict.DENY
    assert "isolated by prod/web-in; no rule allows it" in "\n".join(t.lines())
    w.policy("prod/web-in", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [ALL_FROM_CLIENT]})
    assert w.allowed("prod/client", "prod/web", 80)
    assert not w.allowed("prod/client", "prod/db", 80)  # egress of client denies


def test_host_network_pods_are_neither_subjects_nor_peers() -> None:
    w = base()
    w.pod("prod/hostpod", "192.168.0.10", host_network=True, identity=int(ReservedIdentity.HOST), app="web")
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [],
                        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]})
    d = w.desired()
    assert ObjectRef("prod", "hostpod") not in d.endpoints
    assert all(k.identity != ReservedIdentity.HOST for k in d.endpoints[ObjectRef("prod", "web")].entries)


def test_pod_without_identity_is_not_a_peer_but_is_a_subject() -> None:
    w = base()
    w.pod("prod/new", None, identity=False, app="client")
    w.policy("prod/p", {"podSelector": {}, "ingress": [ALL_FROM_CLIENT]})
    d = w.desired()
    assert d.endpoints[ObjectRef("prod", "new")].isolated(Direction.INGRESS)
    client = w.pods[ObjectRef("prod", "client")].identity
    assert {k.identity for k in d.endpoints[ObjectRef("prod", "web")].entries} == {client}


def test_peer_selectors_see_identity_labels_only() -> None:
    w = base()
    w.pod("prod/client-abc", "10.0.0.8", app="client", **{"pod-template-hash": "abc"})
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"from": [
        {"podSelector": {"matchLabels": {"pod-template-hash": "abc"}}}]}]})
    # The datapath only knows identities; a per-rollout label cannot be enforced (as Cilium).
    assert not w.allowed("prod/client-abc", "prod/web", 80)
    # Subject selection uses the pod's full labels.
    w.policy("prod/q", {"podSelector": {"matchLabels": {"pod-template-hash": "abc"}}, "ingress": []})
    assert w.desired().endpoints[ObjectRef("prod", "client-abc")].isolated(Direction.INGRESS)


def test_pods_with_same_labels_share_identity_and_entries() -> None:
    w = base()
    a = w.pod("prod/client-2", "10.0.0.12", app="client")
    assert a.identity == w.pods[ObjectRef("prod", "client")].identity
    w.policy("prod/p", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [ALL_FROM_CLIENT]})
    entries = w.desired().endpoints[ObjectRef("prod", "web")].entries
    assert len(entries) == 1


def test_trace_external_and_unknown() -> None:
    w = base()
    w.policy("prod/p", {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "198.51.100.0/24"}}]}]})
    t = trace(w.desired(), w.pods, "198.51.100.7", "10.0.0.1", 80)
    assert t.verdict is Verdict.ALLOW and t.dst.pod is not None and t.dst.pod.ref == ObjectRef("prod", "web")
    assert t.egress.endpoint is None  # the world has no egress policy here
    t = trace(w.desired(), w.pods, "198.51.101.7", "prod/web", 80)
    assert t.src.identity == ReservedIdentity.WORLD and t.verdict is Verdict.DENY
