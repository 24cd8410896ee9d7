"""NetworkPolicy in bpf_lxc.c, on crafted packets (BPF_PROG_TEST_RUN).

Each test starts from an empty policy map; every flow uses its own source
port so that conntrack entries of one test never decide another.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP

from membrane.agent.datapath import EndpointEntry
from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.agent.datapath.layout import Direction as DpDirection
from membrane.agent.datapath.layout import PolicyVerdict
from membrane.agent.datapath.prog_test_run import TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, prog_test_run
from membrane.delta import diff
from membrane.identities import LOCAL_IDENTITY_FLAG, ReservedIdentity
from membrane.k8s_models import ObjectRef
from membrane.policy import (
    EndpointPolicy,
    FlatKey,
    FlatValue,
    PolicyKey,
    PolicyValue,
    Protocol,
    RuleRef,
    RuleTable,
    Verdict,
    flatten_endpoint,
    lookup_flat,
    port_range_prefixes,
)
from membrane.policy.entries import Direction

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

INGRESS, EGRESS = Direction.INGRESS, Direction.EGRESS
ALLOW, DENY = int(Verdict.ALLOW), int(Verdict.DENY)
TCP_, UDP_, SCTP_, ANY = int(Protocol.TCP), int(Protocol.UDP), int(Protocol.SCTP), int(Protocol.ANY)
ICMP_ = 1

POD_A = IPv4Address("10.210.0.10")
POD_B = IPv4Address("10.210.0.11")
POD_LO = IPv4Address("10.210.0.12")  # on loopback: to_container checks skb->ifindex
NODE_IP = IPv4Address("10.210.255.1")
CIDR = IPv4Network("198.51.100.0/24")
IN_CIDR = "198.51.100.7"
OUTSIDE = "203.0.113.1"  # TEST-NET-3: WORLD, never sent anywhere

ID_A, ID_B, ID_LO = 3000, 3001, 3002
ID_CIDR = LOCAL_IDENTITY_FLAG | 1
# ipBlock prefixes over the pods: the whole pod range, and pod B's own /32 (an `except`, say).
PODS_CIDR, B_CIDR = IPv4Network("10.210.0.0/16"), IPv4Network(f"{POD_B}/32")
ID_PODS, ID_B32 = LOCAL_IDENTITY_FLAG | 2, LOCAL_IDENTITY_FLAG | 3
HOST, WORLD = int(ReservedIdentity.HOST), int(ReservedIdentity.WORLD)
EP_A = EndpointEntry(ifindex=201, endpoint_id=30, identity=ID_A, pod_mac="02:aa:00:00:01:0a",
                     host_mac="02:ee:00:00:01:0a")
EP_B = EndpointEntry(ifindex=202, endpoint_id=31, identity=ID_B, pod_mac="02:aa:00:00:01:0b",
                     host_mac="02:ee:00:00:01:0b")
EP_LO = EndpointEntry(ifindex=1, endpoint_id=32, identity=ID_LO, pod_mac="02:aa:00:00:01:0c",
                      host_mac="02:ee:00:00:01:0c")

_ports = itertools.count(20000)


def sport() -> int:
    return next(_ports)


@pytest.fixture(scope="module", autouse=True)
def world(datapath):  # type: ignore[no-untyped-def]
    for ip, entry in ((POD_A, EP_A), (POD_B, EP_B), (POD_LO, EP_LO)):
        datapath.update_map("endpoints", {ip: entry})
        datapath.update_map("ipcache", {IPv4Network(f"{ip}/32"): IpcacheEntry(entry.identity)})
    datapath.update_map("ipcache", {IPv4Network(f"{NODE_IP}/32"): IpcacheEntry(HOST)})
    # As the agent writes them: every ipBlock prefix in the CIDR map, and in the ipcache unless
    # a pod's /32 holds the same key there.
    for prefix, identity in ((CIDR, ID_CIDR), (PODS_CIDR, ID_PODS), (B_CIDR, ID_B32)):
        datapath.update_map("cidr", {prefix: identity})
        if prefix != B_CIDR:
            datapath.update_map("ipcache", {prefix: IpcacheEntry(identity)})
    yield


@pytest.fixture(autouse=True)
def empty_policy(datapath) -> Iterator[None]:  # type: ignore[no-untyped-def]
    datapath.apply_delta("policy", diff({}, datapath.policy()))
    yield


def write(dp, entries: dict[FlatKey, FlatValue]) -> None:  # type: ignore[no-untyped-def]
    """Make the policy map exactly `entries`, the way the agent will (diff + apply)."""
    dp.apply_delta("policy", diff(entries, dp.policy()))
    assert dp.policy() == entries


def key(endpoint: EndpointEntry, direction: Direction, identity: int, protocol: int = ANY,
        port: int = 0, prefix: int = 0) -> FlatKey:
    if protocol != ANY and prefix == 0 and port:
        prefix = 16
    return FlatKey(endpoint.endpoint_id, identity, int(direction), protocol, port, prefix)


def from_a(payload) -> bytes:  # type: ignore[no-untyped-def]
    return bytes(Ether(src=EP_A.pod_mac, dst=EP_A.host_mac) / payload)


def from_b(payload) -> bytes:  # type: ignore[no-untyped-def]
    return bytes(Ether(src=EP_B.pod_mac, dst=EP_B.host_mac) / payload)


def run_a(dp, payload) -> int:  # type: ignore[no-untyped-def]
    return prog_test_run(dp.program_fd("from_container"), from_a(payload), ingress_ifindex=EP_A.ifindex).retval


def run_b(dp, payload) -> int:  # type: ignore[no-untyped-def]
    return prog_test_run(dp.program_fd("from_container"), from_b(payload), ingress_ifindex=EP_B.ifindex).retval


def run_to_lo(dp, payload) -> int:  # type: ignore[no-untyped-def]
    frame = bytes(Ether(src=EP_LO.host_mac, dst=EP_LO.pod_mac) / payload)
    return prog_test_run(dp.program_fd("to_container"), frame).retval  # skb->ifindex = lo


def syn_a(dst: str | IPv4Address, dport: int, port: int | None = None):  # type: ignore[no-untyped-def]
    return IP(src=str(POD_A), dst=str(dst)) / TCP(sport=port or sport(), dport=dport, flags="S")


def counter(dp, reason: str, direction: str) -> int:  # type: ignore[no-untyped-def]
    return sum(s.packets for s in dp.metrics() if s.reason == reason and s.direction == direction)


def flows(dp, src_port: int) -> list:  # type: ignore[no-untyped-def]
    return [f for f in dp.conntrack() if f.sport == src_port]


# -- contract with the policy engine and the Python adapter ----------------------


def test_numbers_agree_with_the_policy_engine() -> None:
    assert int(DpDirection.INGRESS) == int(Direction.INGRESS) == 0
    assert int(DpDirection.EGRESS) == int(Direction.EGRESS) == 1
    assert int(PolicyVerdict.ALLOW) == int(Verdict.ALLOW) and int(PolicyVerdict.DENY) == int(Verdict.DENY)


def test_policy_and_ipcache_maps_roundtrip(datapath) -> None:  # type: ignore[no-untyped-def]
    entries = {
        key(EP_A, EGRESS, 0): FlatValue(ALLOW, 0),
        key(EP_A, INGRESS, ID_B, TCP_, 8000, 6): FlatValue(DENY, 7),  # 8000-8191 as one /6 block... of the port
    }
    entries = {k._replace(port=k.port & 0xFC00) if k.port_prefix == 6 else k: v for k, v in entries.items()}
    write(datapath, entries)
    assert datapath.delete_map("policy", [next(iter(entries))]) == 1
    assert datapath.delete_map("policy", [next(iter(entries))]) == 0
    with pytest.raises(ValueError, match="aligned"):
        datapath.update_map("policy", {key(EP_A, EGRESS, 0, TCP_, 8001, 8): FlatValue(ALLOW, 0)})

    assert datapath.ipcache()[CIDR] == IpcacheEntry(ID_CIDR)
    extra = IPv4Network("192.0.2.0/25")
    datapath.apply_delta("ipcache", diff({**datapath.ipcache(), extra: IpcacheEntry(9, IPv4Address("10.0.0.2"))},
                                         datapath.ipcache()))
    assert datapath.ipcache()[extra] == IpcacheEntry(9, IPv4Address("10.0.0.2"))
    assert datapath.delete_map("ipcache", [extra]) == 1 and extra not in datapath.ipcache()

    cidrs = datapath.cidrs()
    assert cidrs[CIDR] == ID_CIDR and cidrs[B_CIDR] == ID_B32
    datapath.apply_delta("cidr", diff({**cidrs, extra: ID_CIDR + 9}, cidrs))
    assert datapath.cidrs()[extra] == ID_CIDR + 9
    datapath.apply_delta("cidr", diff(cidrs, datapath.cidrs()))
    assert datapath.cidrs() == cidrs and datapath.delete_map("cidr", [extra]) == 0
    with pytest.raises(ValueError, match="non-zero"):
        datapath.update_map("cidr", {extra: 0})


# -- verdicts ------------------------------------------------------------------------


def test_no_entry_drops_and_leaves_no_conntrack(datapath) -> None:  # type: ignore[no-untyped-def]
    before = counter(datapath, "DROP_POLICY_EGRESS", "EGRESS")
    port = sport()
    assert run_a(datapath, syn_a(OUTSIDE, 443, port)) == TC_ACT_SHOT
    assert counter(datapath, "DROP_POLICY_EGRESS", "EGRESS") == before + 1
    assert flows(datapath, port) == []


def test_allow_for_one_peer_and_port(datapath) -> None:  # type: ignore[no-untyped-def]
    write(datapath, {key(EP_A, EGRESS, WORLD, TCP_, 443): FlatValue(ALLOW, 5)})
    port = sport()
    assert run_a(datapath, syn_a(OUTSIDE, 443, port)) == TC_ACT_OK
    (entry,) = flows(datapath, port)
    assert (entry.src_identity, entry.dst_identity) == (ID_A, WORLD)
    assert "POLICY_EGRESS" in entry.flags
    assert run_a(datapath, syn_a(OUTSIDE, 444)) == TC_ACT_SHOT  # other port
    assert run_a(datapath, syn_a(IN_CIDR, 443)) == TC_ACT_SHOT  # other peer (CIDR identity)


def test_cidr_identity_comes_from_the_lpm_ipcache(datapath) -> None:  # type: ignore[no-untyped-def]
    write(datapath, {key(EP_A, EGRESS, ID_CIDR): FlatValue(ALLOW, 1)})
    assert run_a(datapath, syn_a(IN_CIDR, 80)) == TC_ACT_OK
    assert run_a(datapath, syn_a("198.51.101.7", 80)) == TC_ACT_SHOT  # outside the /24: WORLD


def test_any_peer_entry_allows_every_identity(datapath) -> None:  # type: ignore[no-untyped-def]
    write(datapath, {key(EP_A, EGRESS, 0, TCP_, 80): FlatValue(ALLOW, 2)})
    for dst in (OUTSIDE, IN_CIDR, str(NODE_IP)):
        assert run_a(datapath, syn_a(dst, 80)) == TC_ACT_OK, dst


def test_deny_wins_from_either_lookup(datapath) -> None:  # type: ignore[no-untyped-def]
    write(datapath, {
        key(EP_A, EGRESS, 0): FlatValue(ALLOW, 0),                 # any peer, anything
        key(EP_A, EGRESS, WORLD, TCP_, 80): FlatValue(DENY, 3),     # but not WORLD:80
        key(EP_A, EGRESS, ID_CIDR): FlatValue(ALLOW, 4),            # specific allow ...
        key(EP_A, EGRESS, 0, TCP_, 25): FlatValue(DENY, 6),         # ... loses to an any-peer deny
    })
    assert run_a(datapath, syn_a(OUTSIDE, 80)) == TC_ACT_SHOT
    assert run_a(datapath, syn_a(OUTSIDE, 81)) == TC_ACT_OK
    assert run_a(datapath, syn_a(IN_CIDR, 80)) == TC_ACT_OK
    assert run_a(datapath, syn_a(IN_CIDR, 25)) == TC_ACT_SHOT


def test_port_range_as_prefix_blocks(datapath) -> None:  # type: ignore[no-untyped-def]
    blocks = port_range_prefixes(8000, 8999)
    assert len(blocks) > 1
    write(datapath, {key(EP_A, EGRESS, WORLD, TCP_, port, prefix): FlatValue(ALLOW, 1) for port, prefix in blocks})
    for dport, expected in ((7999, TC_ACT_SHOT), (8000, TC_ACT_OK), (8500, TC_ACT_OK), (8999, TC_ACT_OK),
                            (9000, TC_ACT_SHOT)):
        assert run_a(datapath, syn_a(OUTSIDE, dport)) == expected, dport


def test_protocol_any_versus_specific(datapath) -> None:  # type: ignore[no-untyped-def]
    write(datapath, {key(EP_A, EGRESS, WORLD, TCP_, 53): FlatValue(ALLOW, 1)})
    udp = IP(src=str(POD_A), dst=OUTSIDE) / UDP(sport=sport(), dport=53)
    ping = IP(src=str(POD_A), dst=OUTSIDE) / ICMP(type=8, id=sport())
    assert run_a(datapath, syn_a(OUTSIDE, 53)) == TC_ACT_OK
    assert run_a(datapath, udp) == TC_ACT_SHOT  # TCP rule, UDP packet
    assert run_a(datapath, ping) == TC_ACT_SHOT  # rules with ports never allow ICMP

    write(datapath, {key(EP_A, EGRESS, WORLD): FlatValue(ALLOW, 1)})  # a rule without ports: protocol ANY
    assert run_a(datapath, IP(src=str(POD_A), dst=OUTSIDE) / UDP(sport=sport(), dport=53)) == TC_ACT_OK
    assert run_a(datapath, IP(src=str(POD_A), dst=OUTSIDE) / ICMP(type=8, id=sport())) == TC_ACT_OK


def test_sctp_ports_are_parsed(datapath) -> None:  # type: ignore[no-untyped-def]
    write(datapath, {key(EP_A, EGRESS, WORLD, SCTP_, 5000): FlatValue(ALLOW, 1)})
    port = sport()
    assert run_a(datapath, IP(src=str(POD_A), dst=OUTSIDE) / SCTP(sport=port, dport=5000)) == TC_ACT_OK
    (entry,) = flows(datapath, port)
    assert (entry.protocol, entry.dport) == ("132", 5000)
    assert run_a(datapath, IP(src=str(POD_A), dst=OUTSIDE) / SCTP(sport=sport(), dport=5001)) == TC_ACT_SHOT
    # A TCP rule on the same port does not open SCTP.
    write(datapath, {key(EP_A, EGRESS, WORLD, TCP_, 5000): FlatValue(ALLOW, 1)})
    assert run_a(datapath, IP(src=str(POD_A), dst=OUTSIDE) / SCTP(sport=sport(), dport=5000)) == TC_ACT_SHOT


# -- same node: egress of the source, then ingress of the destination -------------


def test_same_node_needs_both_egress_and_ingress(datapath) -> None:  # type: ignore[no-untyped-def]
    write(datapath, {key(EP_A, EGRESS, ID_B, TCP_, 80): FlatValue(ALLOW, 1)})
    before = counter(datapath, "DROP_POLICY_INGRESS", "INGRESS")
    assert run_a(datapath, syn_a(POD_B, 80)) == TC_ACT_SHOT  # B's ingress has no entry
    assert counter(datapath, "DROP_POLICY_INGRESS", "INGRESS") == before + 1

    write(datapath, {key(EP_B, INGRESS, ID_A, TCP_, 80): FlatValue(ALLOW, 1)})
    before = counter(datapath, "DROP_POLICY_EGRESS", "EGRESS")
    assert run_a(datapath, syn_a(POD_B, 80)) == TC_ACT_SHOT  # now A's egress has none
    assert counter(datapath, "DROP_POLICY_EGRESS", "EGRESS") == before + 1

    write(datapath, {key(EP_A, EGRESS, ID_B, TCP_, 80): FlatValue(ALLOW, 1),
                     key(EP_B, INGRESS, ID_A, TCP_, 80): FlatValue(ALLOW, 2)})
    port = sport()
    assert run_a(datapath, syn_a(POD_B, 80, port)) == TC_ACT_REDIRECT
    (entry,) = flows(datapath, port)
    assert {"POLICY_EGRESS", "POLICY_INGRESS"} <= set(entry.flags)
    assert (entry.src_identity, entry.dst_identity) == (ID_A, ID_B)


def test_replies_pass_without_a_reverse_rule(datapath) -> None:  # type: ignore[no-untyped-def]
    write(datapath, {key(EP_A, EGRESS, ID_B): FlatValue(ALLOW, 1),
                     key(EP_B, INGRESS, ID_A): FlatValue(ALLOW, 1)})  # nothing for B -> A
    port = sport()
    assert run_a(datapath, syn_a(POD_B, 80, port)) == TC_ACT_REDIRECT
    syn_ack = IP(src=str(POD_B), dst=str(POD_A)) / TCP(sport=80, dport=port, flags="SA")
    assert run_b(datapath, syn_ack) == TC_ACT_REDIRECT
    assert run_b(datapath, IP(src=str(POD_B), dst=str(POD_A)) / TCP(sport=80, dport=sport(), flags="S")) == TC_ACT_SHOT

    ident = sport()
    assert run_a(datapath, IP(src=str(POD_A), dst=str(POD_B)) / ICMP(type=8, id=ident)) == TC_ACT_REDIRECT
    assert run_b(datapath, IP(src=str(POD_B), dst=str(POD_A)) / ICMP(type=0, id=ident)) == TC_ACT_REDIRECT
    # An echo reply nobody asked for is a new flow, judged (and denied).
    assert run_b(datapath, IP(src=str(POD_B), dst=str(POD_A)) / ICMP(type=0, id=sport())) == TC_ACT_SHOT


def test_established_flow_survives_a_policy_change(datapath) -> None:  # type: ignore[no-untyped-def]
    write(datapath, {key(EP_A, EGRESS, WORLD, TCP_, 443): FlatValue(ALLOW, 1)})
    port = sport()
    assert run_a(datapath, syn_a(OUTSIDE, 443, port)) == TC_ACT_OK
    write(datapath, {})  # policy now denies everything
    data = IP(src=str(POD_A), dst=OUTSIDE) / TCP(sport=port, dport=443, flags="PA") / b"still here"
    assert run_a(datapath, data) == TC_ACT_OK
    assert run_a(datapath, syn_a(OUTSIDE, 443)) == TC_ACT_SHOT  # a new connection is judged by the new policy
    # A closed tuple reused by a fresh SYN is a new connection too.
    assert run_a(datapath, IP(src=str(POD_A), dst=OUTSIDE) / TCP(sport=port, dport=443, flags="R")) == TC_ACT_OK
    assert run_a(datapath, syn_a(OUTSIDE, 443, port)) == TC_ACT_SHOT


# -- host and outside towards a pod (to_container) ---------------------------------


def test_to_container_ingress_uses_the_ipcache_identity(datapath) -> None:  # type: ignore[no-untyped-def]
    from_host = IP(src=str(NODE_IP), dst=str(POD_LO)) / TCP(sport=sport(), dport=8080, flags="S")
    before = counter(datapath, "DROP_POLICY_INGRESS", "INGRESS")
    assert run_to_lo(datapath, from_host) == TC_ACT_SHOT
    assert counter(datapath, "DROP_POLICY_INGRESS", "INGRESS") == before + 1

    # The agent allows the node (e.g. kubelet probes) with an entry for HOST.
    write(datapath, {key(EP_LO, INGRESS, HOST): FlatValue(ALLOW, 0)})
    port = sport()
    assert run_to_lo(datapath, IP(src=str(NODE_IP), dst=str(POD_LO)) / TCP(sport=port, dport=8080, flags="S")) == TC_ACT_OK
    (entry,) = flows(datapath, port)
    assert (entry.src_identity, entry.dst_identity) == (HOST, ID_LO) and "POLICY_INGRESS" in entry.flags
    assert run_to_lo(datapath, IP(src=OUTSIDE, dst=str(POD_LO)) / TCP(sport=sport(), dport=8080, flags="S")) == TC_ACT_SHOT


# -- ipBlocks select pod addresses (CIDR identities from the CIDR map) ------------


def test_ip_block_selects_a_pod_address_on_egress(datapath) -> None:  # type: ignore[no-untyped-def]
    """A's egress allows B's /32 ipBlock only: B is reached by address, though B's ipcache
    identity is its pod identity; LO (another pod, same wide block) is not."""
    write(datapath, {key(EP_A, EGRESS, ID_B32, TCP_, 80): FlatValue(ALLOW, 1),
                     key(EP_B, INGRESS, 0): FlatValue(ALLOW, 0), key(EP_LO, INGRESS, 0): FlatValue(ALLOW, 0)})
    port = sport()
    assert run_a(datapath, syn_a(POD_B, 80, port)) == TC_ACT_REDIRECT
    (entry,) = flows(datapath, port)
    assert (entry.src_identity, entry.dst_identity) == (ID_A, ID_B)  # flows keep the pod identities
    assert run_a(datapath, syn_a(POD_LO, 80)) == TC_ACT_SHOT
    assert run_a(datapath, syn_a(POD_B, 81)) == TC_ACT_SHOT


def test_ip_block_except_excludes_a_pod_address(datapath) -> None:  # type: ignore[no-untyped-def]
    """cidr 10.210.0.0/16 except B's /32: the engine allows ID_PODS only, so B (whose address
    resolves to ID_B32 in the CIDR map) is cut while LO (ID_PODS) is reached."""
    write(datapath, {key(EP_A, EGRESS, ID_PODS): FlatValue(ALLOW, 1),
                     key(EP_B, INGRESS, 0): FlatValue(ALLOW, 0), key(EP_LO, INGRESS, 0): FlatValue(ALLOW, 0)})
    assert run_a(datapath, syn_a(POD_B, 80)) == TC_ACT_SHOT
    assert run_a(datapath, syn_a(POD_LO, 80)) == TC_ACT_REDIRECT
    assert run_a(datapath, syn_a("10.210.9.9", 80)) == TC_ACT_OK  # no pod, in the block
    assert run_a(datapath, syn_a(OUTSIDE, 80)) == TC_ACT_SHOT


def test_ip_block_selects_a_pod_address_on_ingress(datapath) -> None:  # type: ignore[no-untyped-def]
    """B's ingress admits the pods' block by ipBlock; A (10.210.0.10) is in it, by address."""
    write(datapath, {key(EP_A, EGRESS, 0): FlatValue(ALLOW, 0),
                     key(EP_B, INGRESS, ID_PODS, TCP_, 80): FlatValue(ALLOW, 1)})
    port = sport()
    assert run_a(datapath, syn_a(POD_B, 80, port)) == TC_ACT_REDIRECT
    assert "POLICY_INGRESS" in flows(datapath, port)[0].flags
    assert run_a(datapath, syn_a(POD_B, 81)) == TC_ACT_SHOT


def test_cidr_identity_deny_beats_a_pod_identity_allow(datapath) -> None:  # type: ignore[no-untyped-def]
    write(datapath, {key(EP_A, EGRESS, ID_B): FlatValue(ALLOW, 1),
                     key(EP_A, EGRESS, ID_B32, TCP_, 22): FlatValue(DENY, 2),
                     key(EP_B, INGRESS, 0): FlatValue(ALLOW, 0)})
    assert run_a(datapath, syn_a(POD_B, 80)) == TC_ACT_REDIRECT
    assert run_a(datapath, syn_a(POD_B, 22)) == TC_ACT_SHOT


def test_world_entry_selects_pods_outside_every_prefix(datapath) -> None:  # type: ignore[no-untyped-def]
    """0.0.0.0/0 selects WORLD: the CIDR identity of any address under no prefix, pods included."""
    datapath.delete_map("cidr", [PODS_CIDR])  # take the pods' block away for this test
    datapath.delete_map("ipcache", [PODS_CIDR])
    try:
        write(datapath, {key(EP_A, EGRESS, WORLD): FlatValue(ALLOW, 1),
                         key(EP_LO, INGRESS, 0): FlatValue(ALLOW, 0), key(EP_B, INGRESS, 0): FlatValue(ALLOW, 0)})
        assert run_a(datapath, syn_a(POD_LO, 80)) == TC_ACT_REDIRECT
        assert run_a(datapath, syn_a(POD_B, 80)) == TC_ACT_SHOT  # B's /32 prefix: not WORLD
    finally:
        datapath.update_map("cidr", {PODS_CIDR: ID_PODS})
        datapath.update_map("ipcache", {PODS_CIDR: IpcacheEntry(ID_PODS)})


def test_to_container_judges_the_source_address_cidr_identity(datapath) -> None:  # type: ignore[no-untyped-def]
    """From the host stack: the node (HOST in the ipcache) is in the pods' block, so an ipBlock
    of that block admits it, as any address in it; an address outside it is not."""
    write(datapath, {key(EP_LO, INGRESS, ID_PODS, TCP_, 8080): FlatValue(ALLOW, 1)})
    port = sport()
    assert run_to_lo(datapath, IP(src=str(NODE_IP), dst=str(POD_LO)) / TCP(sport=port, dport=8080, flags="S")) == TC_ACT_OK
    (entry,) = flows(datapath, port)
    assert entry.src_identity == HOST
    assert run_to_lo(datapath, IP(src="10.210.7.7", dst=str(POD_LO)) / TCP(sport=sport(), dport=8080, flags="S")) == TC_ACT_OK
    assert run_to_lo(datapath, IP(src=OUTSIDE, dst=str(POD_LO)) / TCP(sport=sport(), dport=8080, flags="S")) == TC_ACT_SHOT


# -- the datapath against the engine's executable model ----------------------------


def test_random_entries_match_lookup_flat(datapath) -> None:  # type: ignore[no-untyped-def]
    """Policy built by the engine (flatten_endpoint), judged by the kernel and by lookup_flat:
    egress of A (from_container) towards, and ingress of LO (to_container) from, peers whose
    identity and CIDR identity differ (pods, the node) or agree (addresses that are no pod)."""
    rng = random.Random(7)
    # address -> (identity, CIDR identity, from_container verdict when allowed)
    peers = {OUTSIDE: (WORLD, WORLD, TC_ACT_OK), IN_CIDR: (ID_CIDR, ID_CIDR, TC_ACT_OK),
             str(NODE_IP): (HOST, ID_PODS, TC_ACT_OK), "10.210.7.7": (ID_PODS, ID_PODS, TC_ACT_OK),
             str(POD_B): (ID_B, ID_B32, TC_ACT_REDIRECT)}
    identities = [0, WORLD, ID_CIDR, HOST, ID_B, ID_PODS, ID_B32]
    rules = RuleTable()
    for _ in range(4):
        flat: dict[FlatKey, FlatValue] = {key(EP_B, INGRESS, 0): FlatValue(ALLOW, 0)}  # B admits all
        for endpoint, direction in ((EP_A, EGRESS), (EP_LO, INGRESS)):
            entries: dict[PolicyKey, PolicyValue] = {}
            for index in range(12):
                protocol = rng.choice([Protocol.TCP, Protocol.UDP, Protocol.ANY])
                start = rng.choice([53, 80, 443, 1000, 8000])
                end = start + rng.choice([0, 0, 7, 1000])
                pkey = (PolicyKey(direction, rng.choice(identities), protocol) if protocol is Protocol.ANY
                        else PolicyKey(direction, rng.choice(identities), protocol, start, end))
                verdict = Verdict.DENY if rng.random() < 0.25 else Verdict.ALLOW
                rule = RuleRef(ObjectRef("default", f"p{index}"), direction, index)
                value = PolicyValue(verdict, frozenset({rule}))
                entries[pkey] = entries[pkey].merged(value) if pkey in entries else value
            selected = {direction: frozenset({ObjectRef("default", "p0")})}
            flat.update(flatten_endpoint(endpoint.endpoint_id, EndpointPolicy(entries, selected), rules))
        write(datapath, flat)
        for _ in range(80):
            address = rng.choice(list(peers))
            identity, cidr_identity, forwarded = peers[address]
            protocol = rng.choice([TCP_, UDP_, ICMP_])
            dport = rng.choice([53, 54, 80, 443, 444, 1000, 1007, 1008, 2000, 8000, 9001, 9002])
            layer = (TCP(sport=sport(), dport=dport, flags="S") if protocol == TCP_
                     else UDP(sport=sport(), dport=dport) if protocol == UDP_ else ICMP(type=8, id=sport()))
            port = 0 if protocol == ICMP_ else dport
            expected = lookup_flat(flat, EP_A.endpoint_id, EGRESS, identity, protocol,  # type: ignore[arg-type]
                                   port, cidr_identity)
            allowed = expected is not None and expected.verdict == ALLOW
            got = run_a(datapath, IP(src=str(POD_A), dst=address) / layer)
            assert got == (forwarded if allowed else TC_ACT_SHOT), ("egress", address, protocol, dport, expected)

            if address == str(POD_B):
                continue  # B's packets come through from_container, not the host stack
            expected = lookup_flat(flat, EP_LO.endpoint_id, INGRESS, identity, protocol,  # type: ignore[arg-type]
                                   port, cidr_identity)
            allowed = expected is not None and expected.verdict == ALLOW
            layer = (TCP(sport=sport(), dport=dport, flags="S") if protocol == TCP_
                     else UDP(sport=sport(), dport=dport) if protocol == UDP_ else ICMP(type=8, id=sport()))
            got = run_to_lo(datapath, IP(src=address, dst=str(POD_LO)) / layer)
            assert got == (TC_ACT_OK if allowed else TC_ACT_SHOT), ("ingress", address, protocol, dport, expected)


def test_icmp_errors_about_a_known_flow_pass(datapath) -> None:  # type: ignore[no-untyped-def]
    """Port unreachable / frag needed ride the flow they are about (no own verdict needed)."""
    write(datapath, {key(EP_A, EGRESS, ID_B, UDP_, 53): FlatValue(ALLOW, 1),
                     key(EP_B, INGRESS, ID_A, UDP_, 53): FlatValue(ALLOW, 1)})  # B may send nothing
    port = sport()
    query = IP(src=str(POD_A), dst=str(POD_B)) / UDP(sport=port, dport=53)
    assert run_a(datapath, query) == TC_ACT_REDIRECT
    unreachable = IP(src=str(POD_B), dst=str(POD_A)) / ICMP(type=3, code=3) / bytes(query)[:28]
    assert run_b(datapath, unreachable) == TC_ACT_REDIRECT
    frag_needed = IP(src=str(POD_B), dst=str(POD_A)) / ICMP(type=3, code=4, nexthopmtu=1400) / bytes(query)[:28]
    assert run_b(datapath, frag_needed) == TC_ACT_REDIRECT
    stranger = IP(src=str(POD_A), dst=str(POD_B)) / UDP(sport=sport(), dport=53)  # never sent
    assert run_b(datapath, IP(src=str(POD_B), dst=str(POD_A)) / ICMP(type=3, code=3) / bytes(stranger)[:28]) == TC_ACT_SHOT
