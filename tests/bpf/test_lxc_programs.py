"""bpf_lxc.c on crafted packets, through BPF_PROG_TEST_RUN (no interfaces needed)."""

from __future__ import annotations

import os
import time
from ipaddress import IPv4Address

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether

from membrane.agent.datapath import (
    CT_CLOSE_TIMEOUT_S,
    CT_LIFETIME_NONTCP_S,
    CT_LIFETIME_TCP_S,
    CT_SYN_TIMEOUT_S,
    ConntrackEntry,
    EndpointEntry,
)
from membrane.agent.datapath.prog_test_run import (
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    prog_test_run,
)
from membrane.policy import EndpointPolicy, RuleTable, flatten_endpoint

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# Two pods on fake veths (ifindex numbers need not exist for ingress_ifindex)
# and one on loopback, since to_container checks skb->ifindex, which a test
# run can only set to a real device.
POD_A = IPv4Address("10.200.0.10")
POD_B = IPv4Address("10.200.0.11")
POD_LO = IPv4Address("10.200.0.12")
EP_A = EndpointEntry(ifindex=101, endpoint_id=10, identity=1000, pod_mac="02:aa:00:00:00:0a", host_mac="02:ee:00:00:00:0a")
EP_B = EndpointEntry(ifindex=102, endpoint_id=11, identity=1001, pod_mac="02:aa:00:00:00:0b", host_mac="02:ee:00:00:00:0b")
EP_LO = EndpointEntry(ifindex=1, endpoint_id=12, identity=1002, pod_mac="02:aa:00:00:00:0c", host_mac="02:ee:00:00:00:0c")
OUTSIDE = "192.0.2.1"  # TEST-NET-1, never sent anywhere: test runs transmit nothing


@pytest.fixture(scope="module", autouse=True)
def endpoints(datapath):  # type: ignore[no-untyped-def]
    for ip, entry in ((POD_A, EP_A), (POD_B, EP_B), (POD_LO, EP_LO)):
        datapath.update_map("endpoints", {ip: entry})
        # No policy selects these pods: the agent's allow-all entries (no entry = drop).
        for key, value in flatten_endpoint(entry.endpoint_id, EndpointPolicy(), RuleTable()).items():
            datapath.update_map("policy", {key: value})
    yield


def from_a(payload) -> bytes:  # type: ignore[no-untyped-def]
    """A frame as pod A puts it on the wire (dst MAC = its host veth)."""
    return bytes(Ether(src=EP_A.pod_mac, dst=EP_A.host_mac) / payload)


def from_b(payload) -> bytes:  # type: ignore[no-untyped-def]
    return bytes(Ether(src=EP_B.pod_mac, dst=EP_B.host_mac) / payload)


def run_from(dp, frame: bytes, ingress_ifindex: int):  # type: ignore[no-untyped-def]
    return prog_test_run(dp.program_fd("from_container"), frame, ingress_ifindex=ingress_ifindex)


def counter(dp, reason: str, direction: str) -> int:  # type: ignore[no-untyped-def]
    for sample in dp.metrics():
        if sample.reason == reason and sample.direction == direction:
            return sample.packets
    return 0


def flow(dp, src: IPv4Address, sport: int, dst: IPv4Address, dport: int, proto: str) -> ConntrackEntry:  # type: ignore[no-untyped-def]
    matches = [
        e for e in dp.conntrack()
        if (e.protocol, e.src, e.sport, e.dst, e.dport) == (proto, src, sport, dst, dport)
    ]
    assert len(matches) == 1, f"expected one {proto} flow, got {matches}"
    return matches[0]


def state(entry: ConntrackEntry) -> tuple[str, ...]:
    """The connection-state flags (without the policy ones)."""
    return tuple(f for f in entry.flags if not f.startswith("POLICY_"))


def test_endpoints_roundtrip(datapath) -> None:  # type: ignore[no-untyped-def]
    assert datapath.endpoints()[POD_A] == EP_A
    ghost = IPv4Address("10.200.0.99")
    datapath.update_map("endpoints", {ghost: EP_B})
    assert datapath.delete_map("endpoints", [ghost]) == 1
    assert datapath.delete_map("endpoints", [ghost]) == 0
    assert ghost not in datapath.endpoints()


@pytest.mark.parametrize("src_ip", ["10.200.0.99", str(POD_B)], ids=["unknown-ip", "other-pods-ip"])
def test_spoofed_source_ip_is_dropped(datapath, src_ip: str) -> None:  # type: ignore[no-untyped-def]
    before = counter(datapath, "DROP_SPOOFED_IP", "EGRESS")
    result = run_from(datapath, from_a(IP(src=src_ip, dst=OUTSIDE) / UDP(sport=1, dport=2)), EP_A.ifindex)
    assert result.retval == TC_ACT_SHOT
    assert counter(datapath, "DROP_SPOOFED_IP", "EGRESS") == before + 1


def test_spoofed_source_mac_is_dropped(datapath) -> None:  # type: ignore[no-untyped-def]
    before = counter(datapath, "DROP_SPOOFED_MAC", "EGRESS")
    frame = bytes(Ether(src="02:66:66:66:66:66", dst=EP_A.host_mac) / IP(src=str(POD_A), dst=OUTSIDE) / UDP())
    assert run_from(datapath, frame, EP_A.ifindex).retval == TC_ACT_SHOT
    assert counter(datapath, "DROP_SPOOFED_MAC", "EGRESS") == before + 1


def test_ipv6_is_dropped_as_unsupported(datapath) -> None:  # type: ignore[no-untyped-def]
    before = counter(datapath, "DROP_UNSUPPORTED_L3", "EGRESS")
    frame = from_a(IPv6(src="fd00::a", dst="fd00::b") / UDP())
    assert run_from(datapath, frame, EP_A.ifindex).retval == TC_ACT_SHOT
    assert counter(datapath, "DROP_UNSUPPORTED_L3", "EGRESS") == before + 1


def test_truncated_ipv4_is_dropped_as_invalid(datapath) -> None:  # type: ignore[no-untyped-def]
    before = counter(datapath, "DROP_INVALID_PACKET", "EGRESS")
    frame = from_a(IP(src=str(POD_A), dst=OUTSIDE) / TCP())[:14 + 20 + 8]  # TCP header cut short
    assert run_from(datapath, frame, EP_A.ifindex).retval == TC_ACT_SHOT
    assert counter(datapath, "DROP_INVALID_PACKET", "EGRESS") == before + 1


def test_arp_needs_the_endpoints_own_sender(datapath) -> None:  # type: ignore[no-untyped-def]
    good = from_a(ARP(op=1, hwsrc=EP_A.pod_mac, psrc=str(POD_A), pdst="169.254.1.1"))
    assert run_from(datapath, good, EP_A.ifindex).retval == TC_ACT_OK
    bad_ip = from_a(ARP(op=2, hwsrc=EP_A.pod_mac, psrc=str(POD_B), pdst="169.254.1.1"))
    assert run_from(datapath, bad_ip, EP_A.ifindex).retval == TC_ACT_SHOT
    bad_mac = from_a(ARP(op=2, hwsrc="02:66:66:66:66:66", psrc=str(POD_A), pdst="169.254.1.1"))
    assert run_from(datapath, bad_mac, EP_A.ifindex).retval == TC_ACT_SHOT


def test_non_endpoint_destination_goes_to_the_stack_unchanged(datapath) -> None:  # type: ignore[no-untyped-def]
    before = counter(datapath, "FORWARDED", "EGRESS")
    frame = from_a(IP(src=str(POD_A), dst=OUTSIDE, ttl=64) / UDP(sport=5353, dport=53))
    result = run_from(datapath, frame, EP_A.ifindex)
    assert result.retval == TC_ACT_OK
    assert result.data_out == frame
    assert counter(datapath, "FORWARDED", "EGRESS") == before + 1


def test_local_destination_is_redirected_with_rewrite(datapath) -> None:  # type: ignore[no-untyped-def]
    before_egress = counter(datapath, "FORWARDED", "EGRESS")
    before_ingress = counter(datapath, "FORWARDED", "INGRESS")
    frame = from_a(IP(src=str(POD_A), dst=str(POD_B), ttl=64) / TCP(sport=40000, dport=8080, flags="S"))
    result = run_from(datapath, frame, EP_A.ifindex)
    assert result.retval == TC_ACT_REDIRECT

    out = Ether(result.data_out)
    assert out.src == EP_B.host_mac and out.dst == EP_B.pod_mac
    assert out[IP].ttl == 63
    sent_checksum = out[IP].chksum
    del out[IP].chksum
    assert IP(bytes(out[IP])).chksum == sent_checksum, "IP checksum not fixed after TTL decrement"
    assert bytes(out[IP].payload) == bytes(Ether(frame)[IP].payload), "L4 must be untouched"
    assert counter(datapath, "FORWARDED", "EGRESS") == before_egress + 1
    assert counter(datapath, "FORWARDED", "INGRESS") == before_ingress + 1


def test_ttl_one_to_local_pod_goes_to_the_stack(datapath) -> None:  # type: ignore[no-untyped-def]
    frame = from_a(IP(src=str(POD_A), dst=str(POD_B), ttl=1) / UDP(sport=7, dport=7))
    assert run_from(datapath, frame, EP_A.ifindex).retval == TC_ACT_OK


def test_tcp_conntrack_new_reply_and_fin(datapath) -> None:  # type: ignore[no-untyped-def]
    syn = from_a(IP(src=str(POD_A), dst=str(POD_B)) / TCP(sport=40001, dport=80, flags="S"))
    assert run_from(datapath, syn, EP_A.ifindex).retval == TC_ACT_REDIRECT
    entry = flow(datapath, POD_A, 40001, POD_B, 80, "TCP")
    assert state(entry) == () and entry.tx_packets == 1 and entry.rx_packets == 0
    assert {"POLICY_EGRESS", "POLICY_INGRESS"} <= set(entry.flags)  # both pods' policies allowed it
    assert entry.lifetime_s == CT_SYN_TIMEOUT_S
    assert entry.src_identity == EP_A.identity

    syn_ack = from_b(IP(src=str(POD_B), dst=str(POD_A)) / TCP(sport=80, dport=40001, flags="SA"))
    assert run_from(datapath, syn_ack, EP_B.ifindex).retval == TC_ACT_REDIRECT
    entry = flow(datapath, POD_A, 40001, POD_B, 80, "TCP")  # still one entry, original orientation
    assert entry.seen_reply and entry.rx_packets == 1
    assert entry.lifetime_s == CT_LIFETIME_TCP_S

    fin = from_a(IP(src=str(POD_A), dst=str(POD_B)) / TCP(sport=40001, dport=80, flags="FA"))
    run_from(datapath, fin, EP_A.ifindex)
    entry = flow(datapath, POD_A, 40001, POD_B, 80, "TCP")
    assert "TX_CLOSING" in entry.flags and "RX_CLOSING" not in entry.flags
    assert entry.tx_packets == 2 and entry.lifetime_s == CT_CLOSE_TIMEOUT_S

    # A new SYN on the same 5-tuple reopens the flow.
    run_from(datapath, syn, EP_A.ifindex)
    entry = flow(datapath, POD_A, 40001, POD_B, 80, "TCP")
    assert state(entry) == () and entry.lifetime_s == CT_SYN_TIMEOUT_S


def test_tcp_rst_closes_both_ways(datapath) -> None:  # type: ignore[no-untyped-def]
    syn = from_a(IP(src=str(POD_A), dst=OUTSIDE) / TCP(sport=40002, dport=443, flags="S"))
    assert run_from(datapath, syn, EP_A.ifindex).retval == TC_ACT_OK
    rst = from_a(IP(src=str(POD_A), dst=OUTSIDE) / TCP(sport=40002, dport=443, flags="R"))
    run_from(datapath, rst, EP_A.ifindex)
    entry = flow(datapath, POD_A, 40002, IPv4Address(OUTSIDE), 443, "TCP")
    assert {"TX_CLOSING", "RX_CLOSING"} <= set(entry.flags)


def test_icmp_echo_reply_is_recognised(datapath) -> None:  # type: ignore[no-untyped-def]
    request = from_a(IP(src=str(POD_A), dst=str(POD_B)) / ICMP(type=8, id=0x4242, seq=1))
    reply = from_b(IP(src=str(POD_B), dst=str(POD_A)) / ICMP(type=0, id=0x4242, seq=1))
    run_from(datapath, request, EP_A.ifindex)
    run_from(datapath, reply, EP_B.ifindex)
    entry = flow(datapath, POD_A, 0x4242, POD_B, 0, "ICMP")
    assert entry.seen_reply and entry.tx_packets == 1 and entry.rx_packets == 1
    assert entry.lifetime_s == CT_LIFETIME_NONTCP_S


def test_to_container_tracks_and_counts_ingress(datapath) -> None:  # type: ignore[no-untyped-def]
    fd = datapath.program_fd("to_container")
    before = counter(datapath, "FORWARDED", "INGRESS")
    frame = bytes(Ether(dst=EP_LO.pod_mac, src=EP_LO.host_mac) / IP(src=OUTSIDE, dst=str(POD_LO)) / UDP(sport=53, dport=5353))
    assert prog_test_run(fd, frame).retval == TC_ACT_OK  # runs on lo (ifindex 1)
    assert counter(datapath, "FORWARDED", "INGRESS") == before + 1
    flow(datapath, IPv4Address(OUTSIDE), 53, POD_LO, 5353, "UDP")

    before_drop = counter(datapath, "DROP_NO_ENDPOINT", "INGRESS")
    not_here = bytes(Ether() / IP(src=OUTSIDE, dst=str(POD_A)) / UDP())  # A lives on another veth
    assert prog_test_run(fd, not_here).retval == TC_ACT_SHOT
    assert counter(datapath, "DROP_NO_ENDPOINT", "INGRESS") == before_drop + 1


def test_conntrack_gc_uses_each_flows_lifetime(datapath) -> None:  # type: ignore[no-untyped-def]
    udp = from_a(IP(src=str(POD_A), dst=OUTSIDE) / UDP(sport=40003, dport=123))
    syn = from_a(IP(src=str(POD_A), dst=str(POD_B)) / TCP(sport=40004, dport=22, flags="S"))
    syn_ack = from_b(IP(src=str(POD_B), dst=str(POD_A)) / TCP(sport=22, dport=40004, flags="SA"))
    for frame, ifindex in ((udp, EP_A.ifindex), (syn, EP_A.ifindex), (syn_ack, EP_B.ifindex)):
        run_from(datapath, frame, ifindex)
    now = time.monotonic_ns()

    def live() -> set[tuple[str, int]]:
        return {(e.protocol, e.sport) for e in datapath.conntrack(now)}

    datapath.conntrack_gc(now)  # nothing that young is collected
    assert {("UDP", 40003), ("TCP", 40004)} <= live()
    assert datapath.conntrack_gc(now + (CT_LIFETIME_NONTCP_S + 1) * 10**9) >= 1
    assert ("UDP", 40003) not in live()
    assert ("TCP", 40004) in live()  # established TCP lives much longer
    datapath.conntrack_gc(now + (CT_LIFETIME_TCP_S + 1) * 10**9)
    assert datapath.conntrack(now) == []


def from_lo(payload) -> bytes:  # type: ignore[no-untyped-def]
    return bytes(Ether(src=EP_LO.pod_mac, dst=EP_LO.host_mac) / payload)


def test_a_flow_out_of_the_stack_goes_back_through_it(datapath) -> None:  # type: ignore[no-untyped-def]
    """kube-proxy coexistence: A's ClusterIP connection, DNATed by the node's netfilter to LO,
    arrives at LO's to_container (entry VIA_STACK, A's egress judged against LO); LO's reply goes
    to the stack untouched, which reverses the DNAT, instead of being redirected into A."""
    fd = datapath.program_fd("to_container")
    translated = bytes(Ether(dst=EP_LO.pod_mac, src=EP_LO.host_mac) /
                       IP(src=str(POD_A), dst=str(POD_LO), ttl=63) / TCP(sport=40100, dport=8080, flags="S"))
    assert prog_test_run(fd, translated).retval == TC_ACT_OK  # runs on lo (ifindex 1)
    entry = flow(datapath, POD_A, 40100, POD_LO, 8080, "TCP")
    assert {"VIA_STACK", "POLICY_EGRESS", "POLICY_INGRESS"} <= set(entry.flags)
    reply = from_lo(IP(src=str(POD_LO), dst=str(POD_A), ttl=64) / TCP(sport=8080, dport=40100, flags="SA"))
    result = run_from(datapath, reply, EP_LO.ifindex)
    assert (result.retval, result.data_out) == (TC_ACT_OK, reply)
    assert flow(datapath, POD_A, 40100, POD_LO, 8080, "TCP").seen_reply

    # The same two pods without translation: from_container's flow keeps the redirect both ways.
    direct = from_a(IP(src=str(POD_A), dst=str(POD_LO)) / TCP(sport=40101, dport=8080, flags="S"))
    assert run_from(datapath, direct, EP_A.ifindex).retval == TC_ACT_REDIRECT
    assert "VIA_STACK" not in flow(datapath, POD_A, 40101, POD_LO, 8080, "TCP").flags
    back = from_lo(IP(src=str(POD_LO), dst=str(POD_A)) / TCP(sport=8080, dport=40101, flags="SA"))
    assert run_from(datapath, back, EP_LO.ifindex).retval == TC_ACT_REDIRECT
