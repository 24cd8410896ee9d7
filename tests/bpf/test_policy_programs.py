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
        datapath.upsert_endpoint(ip, entry)
        datapath.upsert_ipcache(IPv4Network(f"{ip}/32"), IpcacheEntry(entry.identity))
    datapath.upsert_ipcache(IPv4Network(f"{NODE_IP}/32"), IpcacheEntry(HOST))
    datapath.upsert_ipcache(CIDR, IpcacheEntry(ID_CIDR))
    yield


@pytest.fixture(autouse=True)
def empty_policy(datapath) -> Iterator[None]:  # type: ignore[no-untyped-def]
    datapath.apply_policy(diff({}, datapath.policy()))
    yield


def write(dp, entries: dict[FlatKey, FlatValue]) -> None:  # type: ignore[no-untyped-def]
    """Make the policy map exactly `entries`, the way the agent will (diff + apply)."""
    dp.apply_policy(diff(entries, dp.policy()))
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
    assert datapath.delete_policy(next(iter(entries))) is True
    assert datapath.delete_policy(next(iter(entries))) is False
    with pytest.raises(ValueError, match="aligned"):
        datapath.upsert_policy(key(EP_A, EGRESS, 0, TCP_, 8001, 8), FlatValue(ALLOW, 0))

    assert datapath.ipcache()[CIDR] == IpcacheEntry(ID_CIDR)
    extra = IPv4Network("192.0.2.0/25")
    datapath.apply_ipcache(diff({**datapath.ipcache(), extra: IpcacheEntry(9, IPv4Address("10.0.0.2"))},
                                datapath.ipcache()))
    assert datapath.ipcache()[extra] == IpcacheEntry(9, IPv4Address("10.0.0.2"))
    assert datapath.delete_ipcache(extra) is True and extra not in datapath.ipcache()


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


# -- the datapath against the engine's executable model ----------------------------


def test_random_entries_match_lookup_flat(datapath) -> None:  # type: ignore[no-untyped-def]
    """Policy built by the engine (flatten_endpoint), judged by the kernel and by lookup_flat."""
    rng = random.Random(7)
    peers = {WORLD: OUTSIDE, ID_CIDR: IN_CIDR, HOST: str(NODE_IP)}
    rules = RuleTable()
    for _ in range(3):
        entries: dict[PolicyKey, PolicyValue] = {}
        for index in range(12):
            protocol = rng.choice([Protocol.TCP, Protocol.UDP, Protocol.ANY])
            start = rng.choice([53, 80, 443, 1000, 8000])
            end = start + rng.choice([0, 0, 7, 1000])
            pkey = (PolicyKey(EGRESS, rng.choice([0, *peers]), protocol) if protocol is Protocol.ANY
                    else PolicyKey(EGRESS, rng.choice([0, *peers]), protocol, start, end))
            verdict = Verdict.DENY if rng.random() < 0.25 else Verdict.ALLOW
            rule = RuleRef(ObjectRef("default", f"p{index}"), EGRESS, index)
            value = PolicyValue(verdict, frozenset({rule}))
            entries[pkey] = entries[pkey].merged(value) if pkey in entries else value
        endpoint = EndpointPolicy(entries=entries, selected_by={EGRESS: frozenset({ObjectRef("default", "p0")})})
        flat = flatten_endpoint(EP_A.endpoint_id, endpoint, rules)
        write(datapath, flat)
        for _ in range(60):
            identity = rng.choice(list(peers))
            protocol = rng.choice([TCP_, UDP_, ICMP_])
            dport = rng.choice([53, 54, 80, 443, 444, 1000, 1007, 1008, 2000, 8000, 9001, 9002])
            layer = (TCP(sport=sport(), dport=dport, flags="S") if protocol == TCP_
                     else UDP(sport=sport(), dport=dport) if protocol == UDP_ else ICMP(type=8, id=sport()))
            expected = lookup_flat(flat, EP_A.endpoint_id, EGRESS, identity, protocol,  # type: ignore[arg-type]
                                   0 if protocol == ICMP_ else dport)
            allowed = expected is not None and expected.verdict == ALLOW
            got = run_a(datapath, IP(src=str(POD_A), dst=peers[identity]) / layer)
            assert got == (TC_ACT_OK if allowed else TC_ACT_SHOT), (identity, protocol, dport, expected)


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
