"""Cross-node traffic on crafted packets (BPF_PROG_TEST_RUN): the encapsulation decision in
``from_container`` and the receiving side, ``from_overlay``.

BPF_PROG_TEST_RUN cannot attach tunnel metadata to its skb, so ``from_overlay`` is tested on a
build with test hooks (the VNI comes from skb->mark when metadata is missing); the production
build must drop such packets. The VNI on the wire is checked with real packets
(tests/netns/test_overlay.py).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether

from membrane.agent.datapath import EndpointEntry, NodeConfig
from membrane.agent.datapath.encoding import ip_to_field
from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.agent.datapath.layout import IpcacheFlag
from membrane.agent.datapath.prog_test_run import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, prog_test_run
from membrane.delta import diff
from membrane.identities import LOCAL_IDENTITY_FLAG, ReservedIdentity
from membrane.policy import FlatKey, FlatValue, Protocol, Verdict

from .conftest import fresh_pin_root, remove_pins

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

INGRESS, EGRESS = 0, 1
ALLOW, DENY = int(Verdict.ALLOW), int(Verdict.DENY)
ANY, TCP_ = int(Protocol.ANY), int(Protocol.TCP)

POD_A = IPv4Address("10.211.1.10")  # local
REMOTE = IPv4Address("10.211.2.20")  # a pod on the other node
REMOTE_NODE = IPv4Address("192.168.77.2")
REMOTE_PODS = IPv4Network("10.211.2.0/23")  # the other node's pod CIDR: it owns these addresses
OTHER_NODE = IPv4Address("192.168.77.3")  # a third node
OTHER_POD = IPv4Address("10.211.9.30")  # a pod of the third node
STRANGER = IPv4Address("192.168.77.99")  # on the underlay, but no node
OUTSIDE = "203.0.113.9"
ID_A, ID_R, ID_OTHER = 4000, 4001, 4002
TUNNEL_IFINDEX = 1  # test runs only record the redirect target; loopback always exists
EP_A = EndpointEntry(ifindex=211, endpoint_id=41, identity=ID_A, pod_mac="02:aa:00:00:02:0a",
                     host_mac="02:ee:00:00:02:0a")
_ports = itertools.count(30000)


@pytest.fixture(scope="module")
def dp() -> Iterator[object]:
    from membrane.agent.datapath import Datapath

    root = fresh_pin_root()
    datapath = Datapath(root, test_hooks=True)
    try:
        datapath.load()
        datapath.update_map("endpoints", {POD_A: EP_A})
        datapath.update_map("ipcache", {IPv4Network(f"{POD_A}/32"): IpcacheEntry(ID_A)})
        datapath.update_map("ipcache", {IPv4Network(f"{REMOTE}/32"): IpcacheEntry(ID_R, REMOTE_NODE)})
        datapath.update_map("ipcache", {REMOTE_PODS: IpcacheEntry(int(ReservedIdentity.WORLD), REMOTE_NODE)})
        for node in (REMOTE_NODE, OTHER_NODE):
            datapath.update_map("ipcache", {IPv4Network(f"{node}/32"): IpcacheEntry(int(ReservedIdentity.REMOTE_NODE), flags=int(IpcacheFlag.NODE))})
        datapath.update_map("ipcache", {IPv4Network(f"{OTHER_POD}/32"): IpcacheEntry(ID_OTHER, OTHER_NODE)})
        yield datapath
    finally:
        datapath.close()
        remove_pins(root)


@pytest.fixture(autouse=True)
def tunnel_and_empty_policy(dp) -> Iterator[None]:  # type: ignore[no-untyped-def]
    dp.set_node_config(NodeConfig(TUNNEL_IFINDEX, IPv4Address("192.168.77.1")))
    dp.apply_delta("policy", diff({}, dp.policy()))
    yield


def write(dp, entries: dict[FlatKey, FlatValue]) -> None:  # type: ignore[no-untyped-def]
    dp.apply_delta("policy", diff(entries, dp.policy()))


def key(direction: int, identity: int, protocol: int = ANY, port: int = 0) -> FlatKey:
    return FlatKey(EP_A.endpoint_id, identity, direction, protocol, port, 16 if port else 0)


def counter(dp, reason: str, direction: str) -> int:  # type: ignore[no-untyped-def]
    return sum(s.packets for s in dp.metrics() if s.reason == reason and s.direction == direction)


def send_from_a(dp, payload):  # type: ignore[no-untyped-def]
    frame = bytes(Ether(src=EP_A.pod_mac, dst=EP_A.host_mac) / payload)
    return prog_test_run(dp.program_fd("from_container"), frame, ingress_ifindex=EP_A.ifindex)


def arrive(dp, payload, vni: int, peer: IPv4Address | str = REMOTE_NODE):  # type: ignore[no-untyped-def]
    """A decapsulated frame on the VXLAN device; `vni` and `peer` (the outer source) stand in for
    its tunnel metadata."""
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / payload)
    return prog_test_run(dp.program_fd("from_overlay"), frame, ingress_ifindex=77, mark=vni,
                         cb0=ip_to_field(IPv4Address(peer)))


def syn(src: IPv4Address | str, dst: IPv4Address | str, port: int, dport: int = 80):  # type: ignore[no-untyped-def]
    return IP(src=str(src), dst=str(dst), ttl=64) / TCP(sport=port, dport=dport, flags="S")


# -- the sending node: from_container ---------------------------------------------------


def test_remote_pod_is_encapsulated_after_egress_policy(dp) -> None:  # type: ignore[no-untyped-def]
    write(dp, {key(EGRESS, ID_R, TCP_, 80): FlatValue(ALLOW, 3)})
    port = next(_ports)
    run = send_from_a(dp, syn(POD_A, REMOTE, port))
    assert run.retval == TC_ACT_REDIRECT  # to the tunnel device, with the tunnel key set
    assert IP(run.data_out[14:]).ttl == 63  # this node routed it
    (flow,) = [f for f in dp.conntrack() if f.sport == port]
    assert (flow.src_identity, flow.dst_identity) == (ID_A, ID_R)  # the destination's identity from the ipcache

    denied = send_from_a(dp, syn(POD_A, REMOTE, next(_ports), dport=81))
    assert denied.retval == TC_ACT_SHOT  # egress is judged on the sending node


def test_established_flow_keeps_going_through_the_tunnel(dp) -> None:  # type: ignore[no-untyped-def]
    write(dp, {key(EGRESS, 0): FlatValue(ALLOW, 1)})
    port = next(_ports)
    assert send_from_a(dp, syn(POD_A, REMOTE, port)).retval == TC_ACT_REDIRECT
    write(dp, {})  # policy gone: the flow rides conntrack, still encapsulated
    ack = IP(src=str(POD_A), dst=str(REMOTE)) / TCP(sport=port, dport=80, flags="A")
    assert send_from_a(dp, ack).retval == TC_ACT_REDIRECT


def test_non_tunnelled_destinations_go_to_the_stack(dp) -> None:  # type: ignore[no-untyped-def]
    write(dp, {key(EGRESS, 0): FlatValue(ALLOW, 1)})
    assert send_from_a(dp, syn(POD_A, OUTSIDE, next(_ports))).retval == TC_ACT_OK
    assert send_from_a(dp, syn(POD_A, REMOTE_NODE, next(_ports))).retval == TC_ACT_OK  # node IP: underlay


def test_no_tunnel_device_drops_instead_of_leaking(dp) -> None:  # type: ignore[no-untyped-def]
    write(dp, {key(EGRESS, 0): FlatValue(ALLOW, 1)})
    dp.set_node_config(NodeConfig())
    before = counter(dp, "DROP_NO_ROUTE", "EGRESS")
    assert send_from_a(dp, syn(POD_A, REMOTE, next(_ports))).retval == TC_ACT_SHOT
    assert counter(dp, "DROP_NO_ROUTE", "EGRESS") == before + 1


def test_node_config_roundtrip(dp) -> None:  # type: ignore[no-untyped-def]
    assert dp.node_config() == NodeConfig(TUNNEL_IFINDEX, IPv4Address("192.168.77.1"))


# -- the receiving node: from_overlay --------------------------------------------------------


def test_source_identity_is_the_vni_not_the_ipcache(dp) -> None:  # type: ignore[no-untyped-def]
    # Ingress of A allows ID_OTHER only; the ipcache says REMOTE is ID_R. The VNI decides.
    write(dp, {key(INGRESS, ID_OTHER, TCP_, 80): FlatValue(ALLOW, 9)})
    port = next(_ports)
    run = arrive(dp, syn(REMOTE, POD_A, port), vni=ID_OTHER)
    assert run.retval == TC_ACT_REDIRECT  # bpf_redirect_peer into the pod
    out = Ether(run.data_out)
    assert (out.dst, out.src) == (EP_A.pod_mac, EP_A.host_mac)
    (flow,) = [f for f in dp.conntrack() if f.sport == port]
    assert (flow.src_identity, flow.dst_identity) == (ID_OTHER, ID_A)
    assert "POLICY_INGRESS" in flow.flags

    before = counter(dp, "DROP_POLICY_INGRESS", "INGRESS")
    assert arrive(dp, syn(REMOTE, POD_A, next(_ports)), vni=ID_R).retval == TC_ACT_SHOT
    assert counter(dp, "DROP_POLICY_INGRESS", "INGRESS") == before + 1


def test_deny_by_identity_wins(dp) -> None:  # type: ignore[no-untyped-def]
    write(dp, {key(INGRESS, 0): FlatValue(ALLOW, 1), key(INGRESS, ID_R): FlatValue(DENY, 2)})
    assert arrive(dp, syn(REMOTE, POD_A, next(_ports)), vni=ID_R).retval == TC_ACT_SHOT
    assert arrive(dp, syn(REMOTE, POD_A, next(_ports)), vni=ID_OTHER).retval == TC_ACT_REDIRECT


def test_ip_block_selects_a_remote_pod_by_its_inner_source_address(dp) -> None:  # type: ignore[no-untyped-def]
    """The identity comes from the VNI, the CIDR identity from the inner source address and this
    node's CIDR map: an ipBlock of the remote pods' block admits REMOTE, its except cuts it."""
    block, pod32 = IPv4Network("10.211.2.0/24"), IPv4Network(f"{REMOTE}/32")
    id_block, id_pod32 = LOCAL_IDENTITY_FLAG | 1, LOCAL_IDENTITY_FLAG | 2
    dp.update_map("cidr", {block: id_block})
    try:
        write(dp, {key(INGRESS, id_block, TCP_, 80): FlatValue(ALLOW, 5)})
        port = next(_ports)
        assert arrive(dp, syn(REMOTE, POD_A, port), vni=ID_R).retval == TC_ACT_REDIRECT
        (flow,) = [f for f in dp.conntrack() if f.sport == port]
        assert flow.src_identity == ID_R  # flows keep the VNI's identity
        assert arrive(dp, syn("10.211.3.1", POD_A, next(_ports)), vni=ID_R).retval == TC_ACT_SHOT

        dp.update_map("cidr", {pod32: id_pod32})  # cidr 10.211.2.0/24 except REMOTE/32: the engine allows id_block only
        assert arrive(dp, syn(REMOTE, POD_A, next(_ports)), vni=ID_R).retval == TC_ACT_SHOT
        assert arrive(dp, syn("10.211.2.99", POD_A, next(_ports)), vni=ID_OTHER).retval == TC_ACT_REDIRECT
    finally:
        dp.delete_map("cidr", [block])
        dp.delete_map("cidr", [pod32])


def test_replies_of_local_flows_pass_without_ingress_policy(dp) -> None:  # type: ignore[no-untyped-def]
    write(dp, {key(EGRESS, ID_R): FlatValue(ALLOW, 1)})  # nothing allows ingress to A
    port = next(_ports)
    assert send_from_a(dp, syn(POD_A, REMOTE, port)).retval == TC_ACT_REDIRECT
    synack = IP(src=str(REMOTE), dst=str(POD_A)) / TCP(sport=80, dport=port, flags="SA")
    assert arrive(dp, synack, vni=ID_R).retval == TC_ACT_REDIRECT
    echo_id = next(_ports)
    assert send_from_a(dp, IP(src=str(POD_A), dst=str(REMOTE)) / ICMP(id=echo_id)).retval == TC_ACT_REDIRECT
    reply = IP(src=str(REMOTE), dst=str(POD_A)) / ICMP(type=0, id=echo_id)
    assert arrive(dp, reply, vni=ID_R).retval == TC_ACT_REDIRECT
    assert arrive(dp, syn(REMOTE, POD_A, next(_ports)), vni=ID_R).retval == TC_ACT_SHOT  # a new flow is judged


def test_only_local_pods_are_reachable_through_the_tunnel(dp) -> None:  # type: ignore[no-untyped-def]
    write(dp, {key(INGRESS, 0): FlatValue(ALLOW, 1)})
    before = counter(dp, "DROP_NO_ENDPOINT", "INGRESS")
    assert arrive(dp, syn(REMOTE, OUTSIDE, next(_ports)), vni=ID_R).retval == TC_ACT_SHOT
    assert counter(dp, "DROP_NO_ENDPOINT", "INGRESS") == before + 1


def test_missing_vni_drops(dp) -> None:  # type: ignore[no-untyped-def]
    write(dp, {key(INGRESS, 0): FlatValue(ALLOW, 1)})
    before = counter(dp, "DROP_TUNNEL_KEY", "INGRESS")
    assert arrive(dp, syn(REMOTE, POD_A, next(_ports)), vni=0).retval == TC_ACT_SHOT
    assert counter(dp, "DROP_TUNNEL_KEY", "INGRESS") == before + 1


def test_production_build_never_reads_the_mark(datapath) -> None:  # type: ignore[no-untyped-def]
    """Without test hooks, a packet without tunnel metadata drops whatever its mark."""
    datapath.update_map("endpoints", {POD_A: EP_A})
    try:
        frame = bytes(Ether() / syn(REMOTE, POD_A, next(_ports)))
        run = prog_test_run(datapath.program_fd("from_overlay"), frame, ingress_ifindex=77, mark=ID_R)
        assert run.retval == TC_ACT_SHOT
        assert counter(datapath, "DROP_TUNNEL_KEY", "INGRESS") == 1
    finally:
        datapath.delete_map("endpoints", [POD_A])


# -- what the node's stack routes into the tunnel: to_overlay ------------------------------


NODE_SELF = IPv4Address("192.168.77.1")  # this node's address (the node config's)


def leave(dp, payload):  # type: ignore[no-untyped-def]
    """A frame the node's stack routes into the tunnel device (its tc egress, no tunnel key yet)."""
    frame = bytes(Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:02") / payload)
    return prog_test_run(dp.program_fd("to_overlay"), frame, ifindex=1)  # skb->ifindex must exist: lo


def test_to_overlay_keys_the_stacks_packets_and_their_replies_return_to_the_stack(dp) -> None:  # type: ignore[no-untyped-def]
    """kube-proxy DNATed A's ClusterIP connection to REMOTE: the stack routes it into the tunnel,
    to_overlay gives it its key and a VIA_STACK entry; the reply goes to the stack (which reverses
    the DNAT), not straight into A."""
    write(dp, {key(EGRESS, 0): FlatValue(ALLOW, 1)})
    port = next(_ports)
    assert leave(dp, syn(POD_A, REMOTE, port, 8080)).retval == TC_ACT_OK
    (flow,) = [f for f in dp.conntrack() if f.sport == port]
    assert "VIA_STACK" in flow.flags and (flow.src_identity, flow.dst_identity) == (ID_A, ID_R)
    synack = IP(src=str(REMOTE), dst=str(POD_A)) / TCP(sport=8080, dport=port, flags="SA")
    assert arrive(dp, synack, vni=ID_R).retval == TC_ACT_OK
    # A's own connection to REMOTE, set up by from_container, keeps the redirect both ways.
    direct = next(_ports)
    assert send_from_a(dp, syn(POD_A, REMOTE, direct)).retval == TC_ACT_REDIRECT
    synack = IP(src=str(REMOTE), dst=str(POD_A)) / TCP(sport=80, dport=direct, flags="SA")
    assert arrive(dp, synack, vni=ID_R).retval == TC_ACT_REDIRECT


def test_to_overlay_speaks_only_for_this_node_and_its_pods(dp) -> None:  # type: ignore[no-untyped-def]
    own = next(_ports)
    assert leave(dp, syn(NODE_SELF, REMOTE, own)).retval == TC_ACT_OK  # the node's own connection
    (flow,) = [f for f in dp.conntrack() if f.sport == own]
    assert flow.src_identity == int(ReservedIdentity.REMOTE_NODE) and "VIA_STACK" in flow.flags
    reply = IP(src=str(REMOTE), dst=str(NODE_SELF)) / TCP(sport=80, dport=own, flags="SA")
    assert arrive(dp, reply, vni=ID_R).retval == TC_ACT_OK  # to the node's stack, though no pod has the address
    before = counter(dp, "DROP_TUNNEL_SOURCE_NOT_OWNED", "EGRESS")
    assert leave(dp, syn(OUTSIDE, REMOTE, next(_ports))).retval == TC_ACT_SHOT  # the receiver would refuse it
    assert counter(dp, "DROP_TUNNEL_SOURCE_NOT_OWNED", "EGRESS") == before + 1
    before = counter(dp, "DROP_NO_ROUTE", "EGRESS")
    assert leave(dp, syn(POD_A, OUTSIDE, next(_ports))).retval == TC_ACT_SHOT  # no node behind it
    assert counter(dp, "DROP_NO_ROUTE", "EGRESS") == before + 1
    stray = IP(src=str(REMOTE), dst=str(NODE_SELF)) / TCP(sport=80, dport=next(_ports), flags="SA")
    assert arrive(dp, stray, vni=ID_R).retval == TC_ACT_SHOT  # not a reply of ours: no endpoint


def test_a_reply_to_another_nodes_own_connection_goes_back_through_the_tunnel(dp) -> None:  # type: ignore[no-untyped-def]
    write(dp, {key(INGRESS, 0): FlatValue(ALLOW, 1)})
    port = next(_ports)
    assert arrive(dp, syn(REMOTE_NODE, POD_A, port), vni=int(ReservedIdentity.REMOTE_NODE)).retval == TC_ACT_REDIRECT
    synack = IP(src=str(POD_A), dst=str(REMOTE_NODE)) / TCP(sport=80, dport=port, flags="SA")
    assert send_from_a(dp, synack).retval == TC_ACT_REDIRECT  # into the tunnel, not the underlay
