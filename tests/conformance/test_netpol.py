"""The upstream Kubernetes NetworkPolicy e2e cases (test/e2e/network/netpol), over real packets.

Every check probes the full 9x9 pod matrix (x/a .. z/c) for the protocol and port named and
compares it with the expectation; a mismatch prints both truth tables. Names follow upstream's
`It(...)` descriptions where a case comes from there.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

import pytest

from membrane_testkit.lab.reachability import NS_NAME_LABEL, ProbeCluster, policy

if TYPE_CHECKING:
    from conftest import Netpol

NS = NS_NAME_LABEL


# --- building blocks ------------------------------------------------------------------------------


def pods(**labels: str) -> dict[str, Any]:
    return {"matchLabels": labels}


def pods_expr(*exprs: dict[str, Any]) -> dict[str, Any]:
    return {"matchExpressions": list(exprs)}


def expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        out["values"] = list(values)
    return out


def ns(name: str) -> dict[str, Any]:
    return {"matchLabels": {NS: name}}


def port(number: int | str, protocol: str = "TCP", end: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"protocol": protocol, "port": number}
    if end is not None:
        out["endPort"] = end
    return out


def ingress(name: str, namespace: str, selector: dict[str, Any], rules: list[dict[str, Any]] | None = None,
            ) -> dict[str, Any]:
    """Ingress-only policy; `rules=None` or [] denies all ingress to the selected pods."""
    return policy(name, namespace, {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": rules or []})


def egress(name: str, namespace: str, selector: dict[str, Any], rules: list[dict[str, Any]] | None = None,
           ) -> dict[str, Any]:
    return policy(name, namespace, {"podSelector": selector, "policyTypes": ["Egress"], "egress": rules or []})


ALL: dict[str, Any] = {}


# --- harness sanity (no policy) ------------------------------------------------------------------


def test_everything_reachable_without_policy(netpol: Netpol) -> None:
    for protocol in ("TCP", "UDP", "SCTP"):
        netpol.check(netpol.reach(True), protocol, (80, 81))


def test_probes_see_closed_ports(lab: ProbeCluster) -> None:
    """The probes can fail: nothing serves port 82, so no cell may be reachable there."""
    for protocol in ("TCP", "UDP", "SCTP"):
        observed = lab.probe(protocol, 82).observed
        assert observed.count(True) == 0, observed.pretty()
        assert observed.count(False) == 81


def test_probes_see_silent_drops(lab: ProbeCluster) -> None:
    """The probes notice packets dropped without an answer (what a policy drop looks like):
    a firewall inside x/b's own namespace drops port 80, and exactly x/b's column goes dark
    (x/b reaching itself goes through lo, which the rules exempt)."""
    pod = lab.pods["x/b"]
    rules = [["-p", "tcp", "--dport", "80"], ["-p", "udp", "--dport", "80"], ["-p", "132"]]
    try:
        for rule in rules:
            pod.exec(["iptables", "-I", "INPUT", "!", "-i", "lo", *rule, "-j", "DROP"])
        for protocol in ("TCP", "UDP", "SCTP"):
            r = lab.reachability().expect_to("x/b", False).allow_loopback()
            r.observed = lab.probe(protocol, 80).observed
            assert r.ok(), r.report(protocol)
            assert {r.observed.notes[(src, "x/b")] for src in r.pods if src != "x/b"} <= {"timeout", "INIT not seen"}
    finally:
        for rule in rules:
            pod.exec(["iptables", "-D", "INPUT", "!", "-i", "lo", *rule, "-j", "DROP"], check=False)


# --- default deny, deny all, allow all ---------------------------------------------------------


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP"])
def test_default_deny_ingress(netpol: Netpol, protocol: str) -> None:
    """should support a 'default-deny-ingress' policy"""
    netpol.create(ingress("deny-ingress", "x", ALL))
    netpol.check(netpol.reach().expect_to("x", False), protocol, (80, 81))


def test_default_deny_egress(netpol: Netpol) -> None:
    """should deny egress from all pods in a namespace"""
    netpol.create(egress("deny-egress", "x", ALL))
    r = netpol.reach().expect_from("x", False)
    netpol.check(r, "TCP", (80, 81))
    netpol.check(r, "UDP", 80)


def test_default_deny_all(netpol: Netpol) -> None:
    """should support a 'default-deny-all' policy"""
    netpol.create(policy("deny-all", "x", {"podSelector": ALL, "policyTypes": ["Ingress", "Egress"]}))
    r = netpol.reach().expect_to("x", False).expect_from("x", False)
    netpol.check(r, "TCP", (80, 81))
    netpol.check(r, "UDP", 80)


def test_allow_all_ingress(netpol: Netpol) -> None:
    """should support allow-all policy (ingress: [{}])"""
    netpol.create(ingress("allow-all", "x", ALL, [{}]))
    netpol.check(netpol.reach(True), "TCP", (80, 81))


def test_allow_ingress_for_a_target(netpol: Netpol) -> None:
    """should enforce policy to allow ingress traffic for a target"""
    netpol.create(ingress("deny-all", "x", ALL))
    netpol.create(ingress("allow-all-to-a", "x", pods(pod="a"), [{"from": [{"podSelector": ALL,
                                                                             "namespaceSelector": ALL}]}]))
    netpol.check(netpol.reach().expect_to("x/b", False).expect_to("x/c", False), "TCP", 80)


def test_allow_ingress_from_all_namespaces(netpol: Netpol) -> None:
    """should enforce policy to allow ingress traffic from pods in all namespaces"""
    netpol.create(ingress("allow-from-all-ns", "x", pods(pod="a"), [{"from": [{"namespaceSelector": ALL}]}]))
    netpol.check(netpol.reach(True), "TCP", 80)


def test_deny_ingress_from_other_namespaces(netpol: Netpol) -> None:
    """should deny ingress from pods on other namespaces"""
    netpol.create(ingress("deny-other-ns", "x", ALL, [{"from": [{"podSelector": ALL}]}]))
    netpol.check(netpol.reach().expect_peer("y", "x", False).expect_peer("z", "x", False), "TCP", 80)


# --- selectors -------------------------------------------------------------------------------


def test_pod_selector_within_namespace(netpol: Netpol) -> None:
    """should enforce policy to allow traffic from pods within server namespace based on PodSelector"""
    netpol.create(ingress("x-a-from-b", "x", pods(pod="a"), [{"from": [{"podSelector": pods(pod="b")}]}]))
    netpol.check(netpol.reach().expect_to("x/a", False).expect("x/b", "x/a", True), "TCP", 80)


def test_namespace_selector_only(netpol: Netpol) -> None:
    """should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector"""
    netpol.create(ingress("x-a-from-ns-y", "x", pods(pod="a"), [{"from": [{"namespaceSelector": ns("y")}]}]))
    r = netpol.reach().expect_peer("x", "x/a", False).expect_peer("z", "x/a", False)
    netpol.check(r, "TCP", 80)


def test_pod_selector_match_expressions_in(netpol: Netpol) -> None:
    """should enforce policy based on PodSelector with MatchExpressions"""
    rule = {"from": [{"podSelector": pods_expr(expr("pod", "In", "b"))}]}
    netpol.create(ingress("x-a-from-b-expr", "x", pods(pod="a"), [rule]))
    netpol.check(netpol.reach().expect_to("x/a", False).expect("x/b", "x/a", True), "TCP", 80)


def test_namespace_selector_match_expressions_not_in(netpol: Netpol) -> None:
    """should enforce policy based on NamespaceSelector with MatchExpressions"""
    rule = {"from": [{"namespaceSelector": pods_expr(expr(NS, "NotIn", "x"))}]}
    netpol.create(ingress("x-a-not-from-x", "x", pods(pod="a"), [rule]))
    netpol.check(netpol.reach().expect_peer("x", "x/a", False), "TCP", 80)


def test_match_expressions_exists_and_does_not_exist(netpol: Netpol) -> None:
    """Exists / DoesNotExist on pod and namespace labels"""
    netpol.label_namespace("y", {"team": "blue"})
    netpol.label_pod("z", "c", {"tier": "front"})
    netpol.create(ingress("x-a-exists", "x", pods(pod="a"), [{"from": [
        {"namespaceSelector": pods_expr(expr("team", "Exists"))},
        {"namespaceSelector": ALL, "podSelector": pods_expr(expr("tier", "Exists"))}]}]))
    netpol.create(ingress("x-b-does-not-exist", "x", pods(pod="b"), [{"from": [
        {"namespaceSelector": pods_expr(expr("team", "DoesNotExist")),
         "podSelector": pods_expr(expr("pod", "In", "a", "b", "c"), expr("tier", "DoesNotExist"))}]}]))
    r = netpol.reach()
    r.expect_to("x/a", False).expect_peer("y", "x/a", True).expect("z/c", "x/a", True)
    r.expect_to("x/b", False).expect_peer("x", "x/b", True).expect_peer("z", "x/b", True).expect("z/c", "x/b", False)
    netpol.check(r, "TCP", 80)


def test_pod_selector_or_namespace_selector(netpol: Netpol) -> None:
    """should enforce policy based on PodSelector or NamespaceSelector"""
    rule = {"from": [{"namespaceSelector": pods_expr(expr(NS, "NotIn", "x"))}, {"podSelector": pods(pod="b")}]}
    netpol.create(ingress("x-a-or", "x", pods(pod="a"), [rule]))
    netpol.check(netpol.reach().expect("x/c", "x/a", False), "TCP", 80)


def test_pod_selector_and_namespace_selector(netpol: Netpol) -> None:
    """should enforce policy based on PodSelector and NamespaceSelector"""
    rule = {"from": [{"namespaceSelector": pods_expr(expr(NS, "NotIn", "x")), "podSelector": pods(pod="b")}]}
    netpol.create(ingress("x-a-and", "x", pods(pod="a"), [rule]))
    r = netpol.reach().expect_to("x/a", False).expect("y/b", "x/a", True).expect("z/b", "x/a", True)
    netpol.check(r, "TCP", 80)


def test_multiple_pod_selectors_and_namespace_selectors(netpol: Netpol) -> None:
    """should enforce policy based on Multiple PodSelectors and NamespaceSelectors"""
    rule = {"from": [{"namespaceSelector": pods_expr(expr(NS, "NotIn", "x")),
                      "podSelector": pods_expr(expr("pod", "In", "b", "c"))}]}
    netpol.create(ingress("x-a-multi", "x", pods(pod="a"), [rule]))
    r = netpol.reach().expect_to("x/a", False)
    for src in ("y/b", "y/c", "z/b", "z/c"):
        r.expect(src, "x/a", True)
    netpol.check(r, "TCP", 80)


def test_any_pod_selectors(netpol: Netpol) -> None:
    """should enforce policy based on any PodSelectors"""
    rule = {"from": [{"podSelector": pods(pod="b")}, {"podSelector": pods(pod="c")}]}
    netpol.create(ingress("x-a-any", "x", pods(pod="a"), [rule]))
    r = netpol.reach().expect_to("x/a", False).expect("x/b", "x/a", True).expect("x/c", "x/a", True)
    netpol.check(r, "TCP", 80)


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP"])
def test_pod_in_other_namespace_by_pod_and_namespace_selector(netpol: Netpol, protocol: str) -> None:
    """should enforce policy to allow traffic only from a pod in a different namespace based on
    PodSelector and NamespaceSelector"""
    rule = {"from": [{"namespaceSelector": ns("y"), "podSelector": pods(pod="a")}]}
    netpol.create(ingress("x-a-from-y-a", "x", pods(pod="a"), [rule]))
    netpol.check(netpol.reach().expect_to("x/a", False).expect("y/a", "x/a", True), protocol, 80)


# --- ports -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["TCP", "UDP", "SCTP"])
def test_ports(netpol: Netpol, protocol: str) -> None:
    """should enforce policy based on Ports"""
    rule = {"from": [{"namespaceSelector": ns("y")}], "ports": [port(81, protocol)]}
    netpol.create(ingress("x-a-81-from-y", "x", pods(pod="a"), [rule]))
    netpol.check(netpol.reach().expect_peer("x", "x/a", False).expect_peer("z", "x/a", False), protocol, 81)
    netpol.check(netpol.reach().expect_to("x/a", False), protocol, 80)


def test_stacked_policies_union(netpol: Netpol) -> None:
    """should enforce multiple, stacked policies with overlapping podSelectors"""
    netpol.create(ingress("x-a-81-from-y", "x", pods(pod="a"),
                          [{"from": [{"namespaceSelector": ns("y")}], "ports": [port(81)]}]))
    only_81 = netpol.reach().expect_peer("x", "x/a", False).expect_peer("z", "x/a", False)
    netpol.check(only_81, "TCP", 81)
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 80)
    netpol.create(ingress("x-a-80-from-y", "x", pods(pod="a"),
                          [{"from": [{"namespaceSelector": ns("y")}], "ports": [port(80)]}]))
    both = netpol.reach().expect_peer("x", "x/a", False).expect_peer("z", "x/a", False)
    netpol.check(both, "TCP", (80, 81))


def test_named_port_ingress(netpol: Netpol) -> None:
    """should allow ingress access on one named port"""
    netpol.create(ingress("allow-named-81", "x", ALL, [{"ports": [port("serve-81-tcp")]}]))
    netpol.check(netpol.reach(True), "TCP", 81)
    netpol.check(netpol.reach().expect_to("x", False), "TCP", 80)


def test_named_port_ingress_from_namespace(netpol: Netpol) -> None:
    """should allow ingress access from namespace on one named port"""
    rule = {"from": [{"namespaceSelector": ns("y")}], "ports": [port("serve-80-tcp")]}
    netpol.create(ingress("allow-ns-y-named-80", "x", ALL, [rule]))
    netpol.check(netpol.reach().expect_peer("x", "x", False).expect_peer("z", "x", False), "TCP", 80)
    netpol.check(netpol.reach().expect_to("x", False), "TCP", 81)


def test_named_port_egress(netpol: Netpol) -> None:
    """should allow egress access on one named port"""
    netpol.create(egress("allow-egress-named-80", "x", ALL, [{"ports": [port("serve-80-tcp")]}]))
    netpol.check(netpol.reach(True), "TCP", 80)
    netpol.check(netpol.reach().expect_from("x", False), "TCP", 81)


def test_named_port_is_protocol_specific(netpol: Netpol) -> None:
    """a named port matches its own protocol only: serve-80-udp opens UDP 80, not TCP 80"""
    netpol.create(ingress("allow-named-udp-80", "x", ALL, [{"ports": [port("serve-80-udp", "UDP")]}]))
    netpol.check(netpol.reach(True), "UDP", 80)
    netpol.check(netpol.reach().expect_to("x", False), "TCP", 80)


def test_end_port_range_ingress(netpol: Netpol) -> None:
    """should enforce policy based on endPort (ports 80-81 from namespace y)"""
    rule = {"from": [{"namespaceSelector": ns("y")}], "ports": [port(80, end=81)]}
    netpol.create(ingress("x-a-80-81-from-y", "x", pods(pod="a"), [rule]))
    netpol.check(netpol.reach().expect_peer("x", "x/a", False).expect_peer("z", "x/a", False), "TCP", (80, 81))


def test_end_port_range_boundary(netpol: Netpol) -> None:
    """endPort range 81-9000 opens 81, not 80 (the range is inclusive and starts at port)"""
    netpol.create(ingress("x-a-81-9000", "x", pods(pod="a"), [{"ports": [port(81, end=9000)]}]))
    netpol.check(netpol.reach(True), "TCP", 81)
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 80)


def test_multiple_end_port_ranges(netpol: Netpol) -> None:
    """several ranges in one rule: 75-80 and 82-90 open 80, not 81"""
    netpol.create(ingress("x-a-ranges", "x", pods(pod="a"), [{"ports": [port(75, end=80), port(82, end=90)]}]))
    netpol.check(netpol.reach(True), "TCP", 80)
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 81)


def test_end_port_range_egress_udp(netpol: Netpol) -> None:
    """egress port range on UDP: 79-80 open for UDP only"""
    netpol.create(egress("x-egress-udp-range", "x", ALL, [{"ports": [port(79, "UDP", end=80)]}]))
    netpol.check(netpol.reach(True), "UDP", 80)
    r = netpol.reach().expect_from("x", False)
    netpol.check(r, "UDP", 81)
    netpol.check(r, "TCP", 80)


# --- protocols -------------------------------------------------------------------------------


def test_ingress_any_port_on_one_protocol(netpol: Netpol) -> None:
    """should enforce ingress policy allowing any port traffic to a server on a specific protocol"""
    netpol.create(ingress("x-a-any-tcp", "x", pods(pod="a"), [{"ports": [{"protocol": "TCP"}]}]))
    netpol.check(netpol.reach(True), "TCP", (80, 81))
    netpol.check(netpol.reach().expect_to("x/a", False), "UDP", (80, 81))


def test_udp_only_policy_does_not_allow_tcp(netpol: Netpol) -> None:
    """should not allow access by TCP when a policy specifies only UDP"""
    netpol.create(ingress("x-a-udp-81", "x", pods(pod="a"), [{"ports": [port(81, "UDP")]}]))
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 81)
    netpol.check(netpol.reach(True), "UDP", 81)
    netpol.check(netpol.reach().expect_to("x/a", False), "UDP", 80)


def test_sctp_policy_is_not_tcp(netpol: Netpol) -> None:
    """should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP'"""
    netpol.create(ingress("x-sctp-80", "x", ALL, [{"ports": [port(80, "SCTP")]}]))
    netpol.check(netpol.reach().expect_to("x", False), "TCP", 80)
    netpol.check(netpol.reach(True), "SCTP", 80)
    netpol.check(netpol.reach().expect_to("x", False), "SCTP", 81)


def test_sctp_policy_isolates_selected_pods(netpol: Netpol) -> None:
    """should properly isolate pods that are selected by a policy allowing SCTP"""
    netpol.create(ingress("x-a-sctp-81", "x", pods(pod="a"), [{"ports": [port(81, "SCTP")]}]))
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 81)
    netpol.check(netpol.reach().expect_to("x/a", False), "UDP", 81)


def test_egress_only_one_port_on_one_protocol(netpol: Netpol) -> None:
    """egress allowing only UDP 80: UDP 81, TCP 80 and SCTP 80 from x are cut"""
    netpol.create(egress("x-egress-udp-80", "x", ALL, [{"ports": [port(80, "UDP")]}]))
    netpol.check(netpol.reach(True), "UDP", 80)
    cut = netpol.reach().expect_from("x", False)
    netpol.check(cut, "UDP", 81)
    netpol.check(cut, "TCP", 80)
    netpol.check(cut, "SCTP", 80)


# --- egress ----------------------------------------------------------------------------------


def test_deny_egress_by_pod_selector(netpol: Netpol) -> None:
    """should deny egress from pods based on PodSelector"""
    netpol.create(egress("deny-egress-x-a", "x", pods(pod="a")))
    netpol.check(netpol.reach().expect_from("x/a", False), "TCP", 80)


def test_egress_to_pod_in_other_namespace(netpol: Netpol) -> None:
    """should enforce egress policy allowing traffic to a server in a different namespace based on
    PodSelector and NamespaceSelector"""
    rule = {"to": [{"namespaceSelector": ns("y"), "podSelector": pods(pod="a")}]}
    netpol.create(egress("x-a-to-y-a", "x", pods(pod="a"), [rule]))
    netpol.check(netpol.reach().expect_from("x/a", False).expect("x/a", "y/a", True), "TCP", (80, 81))


def test_ingress_and_egress_together(netpol: Netpol) -> None:
    """should work with Ingress, Egress specified together"""
    netpol.create(policy("x-a-both", "x", {
        "podSelector": pods(pod="a"), "policyTypes": ["Ingress", "Egress"],
        "ingress": [{"from": [{"podSelector": pods(pod="b")}]}],
        "egress": [{"ports": [port(53, "UDP"), port(53, "TCP")]}]}))
    r = netpol.reach().expect_to("x/a", False).expect("x/b", "x/a", True).expect_from("x/a", False)
    netpol.check(r, "TCP", (80, 81))


def test_client_side_egress_deny_wins(netpol: Netpol) -> None:
    """should support denying of egress traffic on the client side (even if the server explicitly
    allows this traffic)"""
    from_x_a = [{"from": [{"namespaceSelector": ns("x"), "podSelector": pods(pod="a")}]}]
    netpol.create(egress("x-a-to-y-a", "x", pods(pod="a"),
                         [{"to": [{"namespaceSelector": ns("y"), "podSelector": pods(pod="a")}]}]),
                  ingress("y-a-from-x-a", "y", pods(pod="a"), from_x_a),
                  ingress("y-b-from-x-a", "y", pods(pod="b"), from_x_a))
    r = netpol.reach().expect_from("x/a", False).expect_to("y/a", False).expect_to("y/b", False)
    r.expect("x/a", "y/a", True)
    netpol.check(r, "TCP", 80)


def test_ingress_and_egress_controlled_independently(netpol: Netpol) -> None:
    """should enforce policies to check ingress and egress policies can be controlled independently
    based on PodSelector"""
    netpol.create(egress("allow-egress-x-a", "x", pods(pod="a"), [{}]),
                  ingress("deny-ingress-x-a", "x", pods(pod="a")))
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 80)


def test_multiple_ingress_policies_allow_all_wins(netpol: Netpol) -> None:
    """should enforce multiple ingress policies with ingress allow-all policy taking precedence"""
    netpol.create(ingress("x-a-80-only", "x", pods(pod="a"), [{"ports": [port(80)]}]))
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 81)
    netpol.create(ingress("allow-all", "x", ALL, [{}]))
    netpol.check(netpol.reach(True), "TCP", 81)


def test_multiple_egress_policies_allow_all_wins(netpol: Netpol) -> None:
    """should enforce multiple egress policies with egress allow-all policy taking precedence"""
    netpol.create(egress("x-a-egress-80-only", "x", pods(pod="a"), [{"ports": [port(80)]}]))
    netpol.check(netpol.reach().expect_from("x/a", False), "TCP", 81)
    netpol.create(egress("allow-all-egress", "x", ALL, [{}]))
    netpol.check(netpol.reach(True), "TCP", 81)


# --- changes over time ---------------------------------------------------------------------


def test_policy_update(netpol: Netpol) -> None:
    """should enforce updated policy"""
    allow = ingress("allow-all-mutate-to-deny-all", "x", ALL, [{}])
    netpol.create(allow)
    netpol.check(netpol.reach(True), "TCP", 81)
    netpol.update(ingress("allow-all-mutate-to-deny-all", "x", ALL, []))
    netpol.check(netpol.reach().expect_to("x", False), "TCP", 81)


def test_policy_update_selector(netpol: Netpol) -> None:
    """editing a policy's podSelector moves isolation from x/a to x/b"""
    netpol.create(ingress("deny-one", "x", pods(pod="a")))
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 80)
    netpol.update(ingress("deny-one", "x", pods(pod="b")))
    netpol.check(netpol.reach().expect_to("x/b", False), "TCP", 80)


def test_ingress_from_updated_namespace(netpol: Netpol) -> None:
    """should allow ingress access from updated namespace (and lose it when the label goes)"""
    netpol.create(ingress("x-a-from-ns2", "x", pods(pod="a"),
                          [{"from": [{"namespaceSelector": pods(ns2="updated")}]}]))
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 80)
    netpol.label_namespace("y", {"ns2": "updated"})
    netpol.check(netpol.reach().expect_to("x/a", False).expect_peer("y", "x/a", True), "TCP", 80)
    netpol.label_namespace("y", {})
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 80)


def test_ingress_from_updated_pod(netpol: Netpol) -> None:
    """should allow ingress access from updated pod"""
    netpol.create(ingress("x-a-from-pod2", "x", pods(pod="a"),
                          [{"from": [{"namespaceSelector": ALL, "podSelector": pods(pod2="updated")}]}]))
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 80)
    netpol.label_pod("x", "b", {"pod2": "updated"})
    netpol.check(netpol.reach().expect_to("x/a", False).expect("x/b", "x/a", True), "TCP", 80)


def test_deny_ingress_to_updated_pod(netpol: Netpol) -> None:
    """should deny ingress access to updated pod (and restore it when the label goes)"""
    netpol.create(ingress("deny-isolated", "x", pods(target="isolated")))
    netpol.check(netpol.reach(True), "TCP", 80)
    netpol.label_pod("x", "a", {"target": "isolated"})
    netpol.check(netpol.reach().expect_to("x/a", False), "TCP", 80)
    netpol.label_pod("x", "a", {})
    netpol.check(netpol.reach(True), "TCP", 80)


def test_policy_delete_restores_reachability(netpol: Netpol) -> None:
    """should stop enforcing policies after they are deleted"""
    deny = policy("deny-all", "x", {"podSelector": ALL, "policyTypes": ["Ingress", "Egress"]})
    netpol.create(deny)
    netpol.check(netpol.reach().expect_to("x", False).expect_from("x", False), "TCP", 80)
    netpol.delete(deny)
    netpol.check(netpol.reach(True), "TCP", 80)


# --- ipBlock ---------------------------------------------------------------------------------


# An ipBlock selects pod addresses too, as upstream expects: the datapath judges the CIDR
# identity of the peer's address (its longest ipBlock prefix, from the CIDR map) alongside the
# pod's identity, so a pod's /32, or a wide block with the pod's /32 excepted, decide by address.


def host_cidr(cluster: Any, pod_key: str) -> str:
    return f"{cluster.ip(pod_key)}/32"


def wide_cidr(cluster: Any, pod_key: str) -> str:
    return str(ipaddress.ip_network(f"{cluster.ip(pod_key)}/8", strict=False))


def test_egress_to_cidr(netpol: Netpol, cluster: Any) -> None:
    """should allow egress access to server in CIDR block (a pod's /32)"""
    netpol.create(egress("x-a-to-y-b-cidr", "x", pods(pod="a"),
                         [{"to": [{"ipBlock": {"cidr": host_cidr(cluster, "y/b")}}]}]))
    netpol.check(netpol.reach().expect_from("x/a", False).expect("x/a", "y/b", True), "TCP", 80)


def test_egress_to_cidr_with_except(netpol: Netpol, cluster: Any) -> None:
    """should enforce except clause while egress access to server in CIDR block"""
    block = {"cidr": wide_cidr(cluster, "y/b"), "except": [host_cidr(cluster, "y/b")]}
    netpol.create(egress("x-a-cidr-except", "x", pods(pod="a"), [{"to": [{"ipBlock": block}]}]))
    netpol.check(netpol.reach().expect("x/a", "y/b", False), "TCP", 80)


def test_egress_cidr_and_except_overlap(netpol: Netpol, cluster: Any) -> None:
    """should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed"""
    block = {"cidr": wide_cidr(cluster, "y/b"), "except": [host_cidr(cluster, "y/b")]}
    netpol.create(egress("x-a-cidr-except", "x", pods(pod="a"), [{"to": [{"ipBlock": block}]}]))
    netpol.check(netpol.reach().expect("x/a", "y/b", False), "TCP", 80)
    netpol.create(egress("x-a-cidr-y-b", "x", pods(pod="a"),
                         [{"to": [{"ipBlock": {"cidr": host_cidr(cluster, "y/b")}}]}]))
    netpol.check(netpol.reach(True), "TCP", 80)


def test_ingress_from_cidr(netpol: Netpol, cluster: Any) -> None:
    """ingress from a pod's /32 ipBlock"""
    netpol.create(ingress("x-a-from-y-b-cidr", "x", pods(pod="a"),
                          [{"from": [{"ipBlock": {"cidr": host_cidr(cluster, "y/b")}}]}]))
    netpol.check(netpol.reach().expect_to("x/a", False).expect("y/b", "x/a", True), "TCP", 80)
