"""The overlay's trust rules on crafted packets (BPF_PROG_TEST_RUN), docs/trust-model.md.

- ``from_container``: a pod's UDP to the tunnel port of anything but a pod is dropped
  (DROP_POD_TO_TUNNEL_PORT), whatever its policy allows;
- ``from_overlay``: VXLAN only from an ipcache entry flagged NODE (else DROP_UNKNOWN_TUNNEL_PEER),
  and the VNI's identity only for an inner source that node owns: itself, or an address whose
  ipcache entry names it as tunnel endpoint (else DROP_TUNNEL_SOURCE_NOT_OWNED).

Each drop is counted under its reason and reported as a flow event carrying the identity the
VNI claimed. The outer source stands in for tunnel metadata through the test build's hook
(skb->cb[0]), as the VNI does through skb->mark (see test_overlay_programs.py).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest
from scapy.layers.inet import IP, TCP, UDP

from membrane.agent.datapath import NodeConfig
from membrane.agent.datapath.encoding import field_to_ip, field_to_port
from membrane.agent.datapath.layout import EventType, FlowEvent, Reason
from membrane.agent.datapath.prog_test_run import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT
from membrane.policy import FlatValue

from .test_overlay_programs import (
    ALLOW,
    EGRESS,
    ID_A,
    ID_OTHER,
    ID_R,
    INGRESS,
    OTHER_NODE,
    OTHER_POD,
    POD_A,
    REMOTE,
    REMOTE_NODE,
    STRANGER,
    TUNNEL_IFINDEX,
    arrive,
    counter,
    dp,
    key,
    send_from_a,
    syn,
    write,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

__all__ = ["dp"]  # the module-scoped datapath fixture of test_overlay_programs.py, used here too

TUNNEL_PORT = 8472
NODE_IP = IPv4Address("192.168.77.1")  # this node
FOREIGN = "203.0.113.5"
_ports = itertools.count(41000)


@pytest.fixture(scope="module")
def events(dp) -> list[tuple[str, str, str, int, int]]:  # type: ignore[no-untyped-def]
    """Drop events as (reason, src, dst, dport, src_identity), appended as the ring is polled."""
    seen: list[tuple[str, str, str, int, int]] = []

    def on_event(raw: bytes) -> None:
        ev = FlowEvent.from_buffer_copy(raw)
        if ev.type == EventType.DROP:
            seen.append((Reason(ev.reason).name, str(field_to_ip(ev.saddr)), str(field_to_ip(ev.daddr)),
                         field_to_port(ev.dport), ev.src_identity))

    dp.open_events(on_event)
    return seen


@pytest.fixture(autouse=True)
def allow_all(dp) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Policy admits everything: every drop below is the trust rules' alone."""
    dp.set_node_config(NodeConfig(TUNNEL_IFINDEX, NODE_IP, TUNNEL_PORT))
    write(dp, {key(EGRESS, 0): FlatValue(ALLOW, 1), key(INGRESS, 0): FlatValue(ALLOW, 1)})
    yield


def drained(dp, events: list[tuple[str, str, str, int, int]]) -> list[tuple[str, str, str, int, int]]:  # type: ignore[no-untyped-def]
    dp.poll_events(0)
    out = list(events)
    events.clear()
    return out


def udp(src: IPv4Address | str, dst: IPv4Address | str, dport: int, sport: int | None = None):  # type: ignore[no-untyped-def]
    return IP(src=str(src), dst=str(dst), ttl=64) / UDP(sport=sport or next(_ports), dport=dport) / (b"\x08" + b"\0" * 15)


# -- a pod never reaches a tunnel port ------------------------------------------------------


@pytest.mark.parametrize("dst", [str(REMOTE_NODE), str(NODE_IP), str(OTHER_NODE), FOREIGN, "10.211.1.1"],
                         ids=["other-node", "own-node", "third-node", "outside", "gateway"])
def test_pod_udp_to_the_tunnel_port_is_dropped(dp, events, dst: str) -> None:  # type: ignore[no-untyped-def]
    before = counter(dp, "DROP_POD_TO_TUNNEL_PORT", "EGRESS")
    drained(dp, events)
    sport = next(_ports)
    assert send_from_a(dp, udp(POD_A, dst, TUNNEL_PORT, sport)).retval == TC_ACT_SHOT
    assert counter(dp, "DROP_POD_TO_TUNNEL_PORT", "EGRESS") == before + 1
    assert ("DROP_POD_TO_TUNNEL_PORT", str(POD_A), dst, TUNNEL_PORT, 0) in drained(dp, events)
    assert not [f for f in dp.conntrack() if f.sport == sport]  # no connection was opened either


def test_first_fragment_to_the_tunnel_port_is_dropped(dp) -> None:  # type: ignore[no-untyped-def]
    """Later fragments carry no ports, but cannot be reassembled into anything without this one."""
    first = IP(src=str(POD_A), dst=str(REMOTE_NODE), flags="MF", id=7) / UDP(sport=next(_ports), dport=TUNNEL_PORT) / (b"\0" * 64)
    assert send_from_a(dp, first).retval == TC_ACT_SHOT


@pytest.mark.parametrize("payload", [
    lambda: udp(POD_A, REMOTE_NODE, TUNNEL_PORT + 1),  # another UDP port of a node
    lambda: IP(src=str(POD_A), dst=str(REMOTE_NODE)) / TCP(sport=next(_ports), dport=TUNNEL_PORT, flags="S"),  # TCP
    lambda: udp(POD_A, FOREIGN, 53),
], ids=["other-udp-port", "tcp-same-port", "dns-outside"])
def test_other_traffic_to_nodes_and_outside_still_passes(dp, payload) -> None:  # type: ignore[no-untyped-def]
    assert send_from_a(dp, payload()).retval == TC_ACT_OK


def test_pods_may_use_the_port_among_themselves(dp) -> None:  # type: ignore[no-untyped-def]
    """To a pod the datagram is delivered into the pod (here: encapsulated to its node), never to a
    node's tunnel socket."""
    assert send_from_a(dp, udp(POD_A, REMOTE, TUNNEL_PORT)).retval == TC_ACT_REDIRECT
    assert send_from_a(dp, udp(POD_A, "10.211.3.77", TUNNEL_PORT)).retval == TC_ACT_REDIRECT  # its pod CIDR


def test_no_tunnel_port_configured_means_no_check(dp) -> None:  # type: ignore[no-untyped-def]
    dp.set_node_config(NodeConfig(TUNNEL_IFINDEX, NODE_IP, 0))
    assert send_from_a(dp, udp(POD_A, REMOTE_NODE, TUNNEL_PORT)).retval == TC_ACT_OK


def test_the_check_follows_the_configured_port(dp) -> None:  # type: ignore[no-untyped-def]
    dp.set_node_config(NodeConfig(TUNNEL_IFINDEX, NODE_IP, 4789))
    assert send_from_a(dp, udp(POD_A, REMOTE_NODE, 4789)).retval == TC_ACT_SHOT
    assert send_from_a(dp, udp(POD_A, REMOTE_NODE, TUNNEL_PORT)).retval == TC_ACT_OK


def test_node_config_carries_the_port(dp) -> None:  # type: ignore[no-untyped-def]
    assert dp.node_config() == NodeConfig(TUNNEL_IFINDEX, NODE_IP, TUNNEL_PORT)


# -- VXLAN only from nodes ----------------------------------------------------------------------


@pytest.mark.parametrize("peer", [str(STRANGER), str(REMOTE), "10.211.3.9", "0.0.0.0"],
                         ids=["unknown-host", "a-pod", "in-a-pod-cidr", "no-outer-source"])
def test_vxlan_from_no_node_is_dropped(dp, events, peer: str) -> None:  # type: ignore[no-untyped-def]
    before = counter(dp, "DROP_UNKNOWN_TUNNEL_PEER", "INGRESS")
    drained(dp, events)
    port = next(_ports)
    assert arrive(dp, syn(REMOTE, POD_A, port), vni=ID_OTHER, peer=peer).retval == TC_ACT_SHOT
    assert counter(dp, "DROP_UNKNOWN_TUNNEL_PEER", "INGRESS") == before + 1
    # The flow names the inner packet and the identity the VNI claimed.
    assert ("DROP_UNKNOWN_TUNNEL_PEER", str(REMOTE), str(POD_A), 80, ID_OTHER) in drained(dp, events)
    assert not [f for f in dp.conntrack() if f.sport == port]


def test_a_known_flow_does_not_let_a_stranger_in(dp) -> None:  # type: ignore[no-untyped-def]
    """Trust is judged before conntrack: a forged reply of an open connection is refused."""
    port = next(_ports)
    assert send_from_a(dp, syn(POD_A, REMOTE, port)).retval == TC_ACT_REDIRECT
    synack = IP(src=str(REMOTE), dst=str(POD_A)) / TCP(sport=80, dport=port, flags="SA")
    assert arrive(dp, synack, vni=ID_R, peer=STRANGER).retval == TC_ACT_SHOT
    assert arrive(dp, synack, vni=ID_R, peer=OTHER_NODE).retval == TC_ACT_SHOT  # a node, not REMOTE's
    assert arrive(dp, synack, vni=ID_R).retval == TC_ACT_REDIRECT  # REMOTE's own node


# -- the VNI only for what the sending node owns ------------------------------------------------


@pytest.mark.parametrize("inner_src", [FOREIGN, str(OTHER_POD), str(POD_A), str(OTHER_NODE), str(NODE_IP)],
                         ids=["foreign", "third-nodes-pod", "receivers-own-pod", "third-node", "receiving-node"])
def test_inner_source_not_owned_by_the_sender_is_dropped(dp, events, inner_src: str) -> None:  # type: ignore[no-untyped-def]
    before = counter(dp, "DROP_TUNNEL_SOURCE_NOT_OWNED", "INGRESS")
    drained(dp, events)
    assert arrive(dp, udp(inner_src, POD_A, 53), vni=ID_A).retval == TC_ACT_SHOT
    assert counter(dp, "DROP_TUNNEL_SOURCE_NOT_OWNED", "INGRESS") == before + 1
    assert ("DROP_TUNNEL_SOURCE_NOT_OWNED", inner_src, str(POD_A), 53, ID_A) in drained(dp, events)


@pytest.mark.parametrize("inner_src", [str(REMOTE), "10.211.3.200", str(REMOTE_NODE)],
                         ids=["its-pod", "its-pod-cidr", "the-node-itself"])
def test_what_the_sender_owns_is_delivered_with_the_vni_identity(dp, inner_src: str) -> None:  # type: ignore[no-untyped-def]
    port = next(_ports)
    assert arrive(dp, syn(inner_src, POD_A, port), vni=ID_OTHER).retval == TC_ACT_REDIRECT
    (flow,) = [f for f in dp.conntrack() if f.sport == port]
    assert flow.src_identity == ID_OTHER


def test_a_third_node_speaks_for_its_own_pods(dp) -> None:  # type: ignore[no-untyped-def]
    assert arrive(dp, syn(OTHER_POD, POD_A, next(_ports)), vni=ID_OTHER, peer=OTHER_NODE).retval == TC_ACT_REDIRECT
    assert arrive(dp, syn(REMOTE, POD_A, next(_ports)), vni=ID_R, peer=OTHER_NODE).retval == TC_ACT_SHOT


def test_ownership_follows_the_ipcache(dp) -> None:  # type: ignore[no-untyped-def]
    """A pod that moves to another node is that node's to speak for, at once; a node removed from
    the ipcache is no peer any more."""
    from membrane.agent.datapath.ipcache import IpcacheEntry
    from membrane.agent.datapath.layout import IpcacheFlag
    from membrane.identities import ReservedIdentity

    moved = IPv4Network("10.211.2.50/32")
    dp.update_map("ipcache", {moved: IpcacheEntry(ID_R, OTHER_NODE)})
    try:
        assert arrive(dp, syn(moved.network_address, POD_A, next(_ports)), vni=ID_R).retval == TC_ACT_SHOT
        assert arrive(dp, syn(moved.network_address, POD_A, next(_ports)), vni=ID_R,
                      peer=OTHER_NODE).retval == TC_ACT_REDIRECT
    finally:
        dp.delete_map("ipcache", [moved])
    # The node leaves: its entry loses the flag and no entry names it any more (the agent writes
    # a NODE entry for every tunnel endpoint it names, so ownership alone never outlives a node).
    node, pod = IPv4Network(f"{OTHER_NODE}/32"), IPv4Network(f"{OTHER_POD}/32")
    dp.update_map("ipcache", {node: IpcacheEntry(int(ReservedIdentity.REMOTE_NODE))})
    dp.update_map("ipcache", {pod: IpcacheEntry(ID_OTHER)})
    try:
        assert arrive(dp, syn(OTHER_POD, POD_A, next(_ports)), vni=ID_OTHER, peer=OTHER_NODE).retval == TC_ACT_SHOT
        assert arrive(dp, syn(OTHER_NODE, POD_A, next(_ports)), vni=ID_OTHER, peer=OTHER_NODE).retval == TC_ACT_SHOT
        assert counter(dp, "DROP_UNKNOWN_TUNNEL_PEER", "INGRESS") >= 2
    finally:
        dp.update_map("ipcache", {node: IpcacheEntry(int(ReservedIdentity.REMOTE_NODE), flags=int(IpcacheFlag.NODE))})
        dp.update_map("ipcache", {pod: IpcacheEntry(ID_OTHER, OTHER_NODE)})


def test_policy_still_judges_what_the_trust_rules_admit(dp) -> None:  # type: ignore[no-untyped-def]
    write(dp, {key(INGRESS, ID_OTHER): FlatValue(ALLOW, 1)})
    assert arrive(dp, syn(REMOTE, POD_A, next(_ports)), vni=ID_OTHER).retval == TC_ACT_REDIRECT
    before = counter(dp, "DROP_POLICY_INGRESS", "INGRESS")
    assert arrive(dp, syn(REMOTE, POD_A, next(_ports)), vni=ID_R).retval == TC_ACT_SHOT
    assert counter(dp, "DROP_POLICY_INGRESS", "INGRESS") == before + 1
