"""The XDP prefilter (bpf/bpf_xdp.c) under BPF_PROG_TEST_RUN on crafted frames (scapy).

Every rule part and action on a frame that matches and one that does not; the CIDR deny list;
the sanity set on one malformed frame per check and on a corpus of frames real stacks send;
truncated and malformed frames (every truncation of real frames, random bytes) judged exactly
as the executable model (membrane/prefilter_model.py) judges them, counters included; the rule
set switching banks; drops reported as flow events naming the rule.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.l2 import ARP, Ether
from scapy.layers.sctp import SCTP
from scapy.packet import Packet, Raw

from membrane.agent.datapath.encoding import field_to_ip
from membrane.agent.datapath.layout import EventType, FlowEvent, Reason
from membrane.agent.datapath.prefilter import ActiveSet
from membrane.agent.datapath.prog_test_run import XDP_DROP, XDP_PASS, xdp_test_run
from membrane.prefilter_model import Outcome, judge
from membrane.prefilter_rules import (
    MAX_RULES,
    SANITY,
    Action,
    EncodedRule,
    FragmentMatch,
    Ipv4Match,
    L4Match,
    LengthMismatch,
    PayloadBase,
    PayloadMatch,
    Range,
    RateLimit,
    Rule,
    TcpFlags,
    encode_rule,
)

SRC, DST = "198.51.100.7", "10.0.0.5"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def frame(pkt: Packet) -> bytes:
    return bytes(ETH / pkt)


class Prefilter:
    """Rules written as the manager writes them: into the idle bank, then one switch."""

    def __init__(self, dp) -> None:  # type: ignore[no-untyped-def]
        self.dp = dp
        self.fd = dp.program_fd("xdp_prefilter")
        self.rules: list[EncodedRule] = []
        self.deny: dict[IPv4Network, int] = {}

    def install(self, rules: Sequence[Rule], deny: dict[IPv4Network, int] | None = None) -> list[EncodedRule]:
        encoded = [encode_rule(rule, 100 + i) for i, rule in enumerate(rules)]
        active = self.dp.prefilter_active()
        bank = 1 - active.bank
        self.dp.write_prefilter_rules(bank, encoded)
        self.dp.reset_prefilter_counters(range(1, 400))
        self.dp.set_prefilter_active(ActiveSet(bank, len(encoded), active.generation + 1))
        old = self.dp.read_map("prefilter_cidr")
        if old:
            self.dp.delete_map("prefilter_cidr", list(old))
        self.deny = dict(deny or {})
        if self.deny:
            self.dp.update_map("prefilter_cidr", self.deny)
        self.rules = encoded
        return encoded

    def run(self, data: bytes) -> int:
        return xdp_test_run(self.fd, data).retval

    def counted(self, ref: int) -> tuple[int, int]:
        counters = self.dp.prefilter_counters([ref])[ref]
        return counters.packets, counters.dropped_packets


@pytest.fixture(scope="module")
def pf(datapath) -> Prefilter:  # type: ignore[no-untyped-def]
    return Prefilter(datapath)


@pytest.fixture(autouse=True)
def empty(pf: Prefilter) -> Iterator[None]:
    yield
    pf.install([])


TCP_RULE = Ipv4Match(protocol=6)
UDP_RULE = Ipv4Match(protocol=17)

# (rule parts, a frame it matches, a frame it does not): every part of the model.
CASES: list[tuple[str, dict[str, object], Packet, Packet]] = [
    ("source", {"source": IPv4Network("198.51.100.0/24")}, IP(src=SRC, dst=DST), IP(src="198.51.101.7", dst=DST)),
    ("destination", {"destination": IPv4Network("10.0.0.4/30")}, IP(src=SRC, dst=DST), IP(src=SRC, dst="10.0.0.8")),
    ("protocol", {"ipv4": Ipv4Match(protocol=47)}, IP(src=SRC, dst=DST, proto=47), IP(src=SRC, dst=DST, proto=50)),
    ("header length", {"ipv4": Ipv4Match(header_length=Range(24, 24))},
     IP(src=SRC, dst=DST, options=[IPOption_RR(routers=[])]) / UDP(), IP(src=SRC, dst=DST) / UDP()),
    ("options present", {"ipv4": Ipv4Match(options_present=True)},
     IP(src=SRC, dst=DST, options=[IPOption_RR(routers=["1.2.3.4"])]), IP(src=SRC, dst=DST)),
    ("no options", {"ipv4": Ipv4Match(options_present=False)},
     IP(src=SRC, dst=DST), IP(src=SRC, dst=DST, options=[IPOption_RR(routers=[])])),
    ("total length", {"ipv4": Ipv4Match(total_length=Range(100, 120))},
     IP(src=SRC, dst=DST) / Raw(bytes(85)), IP(src=SRC, dst=DST) / Raw(bytes(60))),
    ("length shorter", {"ipv4": Ipv4Match(length_mismatch=LengthMismatch.SHORTER)},
     IP(src=SRC, dst=DST, len=200) / Raw(bytes(50)), IP(src=SRC, dst=DST) / Raw(bytes(50))),
    ("length longer", {"ipv4": Ipv4Match(length_mismatch=LengthMismatch.LONGER)},
     IP(src=SRC, dst=DST, len=40) / Raw(bytes(50)), IP(src=SRC, dst=DST, len=20) / Raw(bytes(10))),  # padding
    ("length any", {"ipv4": Ipv4Match(length_mismatch=LengthMismatch.ANY)},
     IP(src=SRC, dst=DST, len=300) / Raw(bytes(50)), IP(src=SRC, dst=DST) / Raw(bytes(50))),
    ("total length below header", {"ipv4": Ipv4Match(total_length_below_header=True)},
     IP(src=SRC, dst=DST, len=12) / Raw(bytes(40)), IP(src=SRC, dst=DST) / Raw(bytes(40))),
    ("reserved flag", {"ipv4": Ipv4Match(fragment=FragmentMatch(reserved=True))},
     IP(src=SRC, dst=DST, flags="evil"), IP(src=SRC, dst=DST, flags="DF")),
    ("DF clear", {"ipv4": Ipv4Match(fragment=FragmentMatch(dont_fragment=False))},
     IP(src=SRC, dst=DST, flags=0), IP(src=SRC, dst=DST, flags="DF")),
    ("MF set", {"ipv4": Ipv4Match(fragment=FragmentMatch(more_fragments=True))},
     IP(src=SRC, dst=DST, flags="MF") / Raw(bytes(16)), IP(src=SRC, dst=DST) / Raw(bytes(16))),
    ("fragment offset", {"ipv4": Ipv4Match(fragment=FragmentMatch(offset=Range(10, 20)))},
     IP(src=SRC, dst=DST, frag=15) / Raw(bytes(16)), IP(src=SRC, dst=DST, frag=21) / Raw(bytes(16))),
    ("fragment overflow", {"ipv4": Ipv4Match(fragment_overflow=True)},
     IP(src=SRC, dst=DST, frag=8190) / Raw(bytes(100)), IP(src=SRC, dst=DST, frag=8000) / Raw(bytes(100))),
    ("ttl", {"ipv4": Ipv4Match(ttl=Range(1, 2))}, IP(src=SRC, dst=DST, ttl=2), IP(src=SRC, dst=DST, ttl=3)),
    ("source ports", {"ipv4": UDP_RULE, "l4": L4Match(source_ports=Range(1000, 2000))},
     IP(src=SRC, dst=DST) / UDP(sport=1500), IP(src=SRC, dst=DST) / UDP(sport=2001)),
    ("destination ports tcp", {"ipv4": TCP_RULE, "l4": L4Match(destination_ports=Range(80, 80))},
     IP(src=SRC, dst=DST) / TCP(dport=80), IP(src=SRC, dst=DST) / TCP(dport=81)),
    ("destination ports sctp", {"ipv4": Ipv4Match(protocol=132), "l4": L4Match(destination_ports=Range(9, 9))},
     IP(src=SRC, dst=DST) / SCTP(dport=9), IP(src=SRC, dst=DST) / SCTP(dport=10)),
    ("ports on a later fragment", {"ipv4": UDP_RULE, "l4": L4Match(destination_ports=Range(0, 65535))},
     IP(src=SRC, dst=DST) / UDP(dport=53), IP(src=SRC, dst=DST, proto=17, frag=3) / Raw(bytes(16))),
    ("tcp flags", {"ipv4": TCP_RULE, "l4": L4Match(tcp_flags=TcpFlags(0x12, 0x02))},
     IP(src=SRC, dst=DST) / TCP(flags="S"), IP(src=SRC, dst=DST) / TCP(flags="SA")),
    ("tcp data offset", {"ipv4": TCP_RULE, "l4": L4Match(tcp_data_offset=Range(6, 15))},
     IP(src=SRC, dst=DST) / TCP(options=[("MSS", 1460)]), IP(src=SRC, dst=DST) / TCP()),
    ("udp length mismatch", {"ipv4": UDP_RULE, "l4": L4Match(udp_length_mismatch=True)},
     IP(src=SRC, dst=DST) / UDP(len=9) / Raw(b"abcd"), IP(src=SRC, dst=DST) / UDP() / Raw(b"abcd")),
    ("udp length matches", {"ipv4": UDP_RULE, "l4": L4Match(udp_length_mismatch=False)},
     IP(src=SRC, dst=DST) / UDP() / Raw(b"abcd"), IP(src=SRC, dst=DST) / UDP(len=200) / Raw(b"abcd")),
    ("udp first fragment length", {"ipv4": UDP_RULE, "l4": L4Match(udp_length_mismatch=False)},
     IP(src=SRC, dst=DST, flags="MF") / UDP(len=3000) / Raw(bytes(64)),
     IP(src=SRC, dst=DST) / UDP(len=3000) / Raw(bytes(64))),
    ("tcp truncated", {"ipv4": TCP_RULE, "l4": L4Match(truncated=True)},
     IP(src=SRC, dst=DST, proto=6) / Raw(bytes(12)), IP(src=SRC, dst=DST) / TCP()),
    ("udp truncated", {"ipv4": UDP_RULE, "l4": L4Match(truncated=True)},
     IP(src=SRC, dst=DST, proto=17, len=24) / Raw(bytes(30)), IP(src=SRC, dst=DST) / UDP()),
    ("ip truncated", {"ipv4": Ipv4Match(truncated=True)}, IP(src=SRC, dst=DST, ihl=15), IP(src=SRC, dst=DST)),
    ("payload", {"payload": PayloadMatch(2, b"\xde\xad", None, PayloadBase.PAYLOAD)},
     IP(src=SRC, dst=DST) / UDP() / Raw(b"xx\xde\xadyy"), IP(src=SRC, dst=DST) / UDP() / Raw(b"xx\xde\xaeyy")),
    ("payload masked", {"payload": PayloadMatch(0, b"\x40", b"\xf0", PayloadBase.PAYLOAD)},
     IP(src=SRC, dst=DST) / TCP(options=[("NOP", None)] * 4) / Raw(b"\x4f"),
     IP(src=SRC, dst=DST) / TCP(options=[("NOP", None)] * 4) / Raw(b"\x5f")),
    ("payload from l4", {"payload": PayloadMatch(2, b"\x00\x35", None, PayloadBase.L4)},
     IP(src=SRC, dst=DST) / UDP(dport=53), IP(src=SRC, dst=DST) / UDP(dport=54)),
    ("payload from ip", {"payload": PayloadMatch(8, b"\x07", None, PayloadBase.IP)},
     IP(src=SRC, dst=DST, ttl=7), IP(src=SRC, dst=DST, ttl=8)),
    ("payload 16 bytes", {"payload": PayloadMatch(0, bytes(range(16)), None, PayloadBase.PAYLOAD)},
     IP(src=SRC, dst=DST) / UDP() / Raw(bytes(range(20))), IP(src=SRC, dst=DST) / UDP() / Raw(bytes(range(15)))),
]


@pytest.mark.parametrize(("parts", "hit", "miss"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_part_matches_exactly(pf: Prefilter, parts: dict[str, object], hit: Packet, miss: Packet) -> None:
    rule = Rule("r", Action.DROP, **parts)  # type: ignore[arg-type]  # the table's parts are Rule's fields
    (encoded,) = pf.install([rule])
    hit_frame, miss_frame = frame(hit), frame(miss)
    # The model agrees first (so the case tests what it says), then the kernel.
    assert judge(hit_frame, pf.rules, {}).outcome is Outcome.DROP_RULE
    assert judge(miss_frame, pf.rules, {}).outcome is Outcome.PASS
    assert pf.run(hit_frame) == XDP_DROP
    assert pf.run(miss_frame) == XDP_PASS
    assert pf.counted(encoded.rule_ref) == (1, 1)


def test_count_counts_and_passes(pf: Prefilter) -> None:
    audit, drop = pf.install([Rule("audit", Action.COUNT, ipv4=UDP_RULE),
                              Rule("drop", Action.DROP, ipv4=UDP_RULE, l4=L4Match(destination_ports=Range(53, 53)))])
    assert pf.run(frame(IP(src=SRC, dst=DST) / UDP(dport=123))) == XDP_PASS
    assert pf.run(frame(IP(src=SRC, dst=DST) / UDP(dport=53))) == XDP_DROP
    assert pf.run(frame(IP(src=SRC, dst=DST) / TCP(dport=53))) == XDP_PASS
    assert pf.counted(audit.rule_ref) == (2, 0)
    assert pf.counted(drop.rule_ref) == (1, 1)
    counters = pf.dp.prefilter_counters([drop.rule_ref])[drop.rule_ref]
    assert counters.bytes == counters.dropped_bytes == len(frame(IP(src=SRC, dst=DST) / UDP(dport=53)))


def test_first_drop_rule_takes_the_drop_later_rules_see_nothing(pf: Prefilter) -> None:
    first, second = pf.install([Rule("a", Action.DROP, ipv4=TCP_RULE), Rule("b", Action.DROP)])
    assert pf.run(frame(IP(src=SRC, dst=DST) / TCP())) == XDP_DROP
    assert pf.counted(first.rule_ref) == (1, 1) and pf.counted(second.rule_ref) == (0, 0)


def test_rate_limit_per_source(pf: Prefilter) -> None:
    (limit,) = pf.install([Rule("limit", Action.RATE_LIMIT, ipv4=Ipv4Match(protocol=1),
                                rate_limit=RateLimit(1, burst=5))])
    a = frame(IP(src=SRC, dst=DST) / ICMP())
    b = frame(IP(src="198.51.100.8", dst=DST) / ICMP())
    # One packet a second refills nothing measurable within the test: the burst passes, the rest drop.
    verdicts_a = [pf.run(a) for _ in range(20)]
    verdicts_b = [pf.run(b) for _ in range(3)]
    assert verdicts_a == [XDP_PASS] * 5 + [XDP_DROP] * 15
    assert verdicts_b == [XDP_PASS] * 3  # its own bucket
    assert pf.counted(limit.rule_ref) == (23, 15)
    assert pf.run(frame(IP(src=SRC, dst=DST) / UDP())) == XDP_PASS  # not ICMP: not limited


def test_rate_limit_refills(pf: Prefilter) -> None:
    pf.install([Rule("limit", Action.RATE_LIMIT, rate_limit=RateLimit(1_000_000, burst=1))])
    data = frame(IP(src=SRC, dst=DST) / ICMP())
    # At a million a second a token comes back every microsecond: a syscall apart, all pass.
    assert [pf.run(data) for _ in range(20)] == [XDP_PASS] * 20


def test_cidr_deny_longest_prefix_counts_its_list(pf: Prefilter) -> None:
    pf.install([Rule("audit", Action.COUNT)], {IPv4Network("198.51.0.0/16"): 7, IPv4Network("198.51.100.0/24"): 8})
    assert pf.run(frame(IP(src=SRC, dst=DST) / UDP())) == XDP_DROP
    assert pf.run(frame(IP(src="198.51.3.3", dst=DST) / UDP())) == XDP_DROP
    assert pf.run(frame(IP(src="198.52.0.1", dst=DST) / UDP())) == XDP_PASS
    assert pf.run(frame(IP(src=DST, dst=SRC) / UDP())) == XDP_PASS  # destinations are not looked up
    assert pf.counted(8) == (1, 1) and pf.counted(7) == (1, 1)
    assert pf.counted(100) == (2, 0)  # denied packets reach no rule


def test_not_ipv4_passes_untouched(pf: Prefilter) -> None:
    pf.install([Rule("all", Action.DROP)])
    assert pf.run(bytes(ETH / ARP())) == XDP_PASS
    assert pf.run(bytes(Ether(type=0x86DD) / Raw(bytes(40)))) == XDP_PASS
    assert pf.run(bytes(ETH)) == XDP_PASS  # Ethernet header only
    assert pf.run(frame(IP(src=SRC, dst=DST))) == XDP_DROP


def test_bank_switch(pf: Prefilter) -> None:
    pf.install([Rule("udp", Action.DROP, ipv4=UDP_RULE)])
    udp, tcp = frame(IP(src=SRC, dst=DST) / UDP()), frame(IP(src=SRC, dst=DST) / TCP())
    active = pf.dp.prefilter_active()
    idle = 1 - active.bank
    pf.dp.write_prefilter_rules(idle, [encode_rule(Rule("tcp", Action.DROP, ipv4=TCP_RULE), 101)])
    # Written, not in force: the old set still decides.
    assert (pf.run(udp), pf.run(tcp)) == (XDP_DROP, XDP_PASS)
    pf.dp.set_prefilter_active(ActiveSet(idle, 1, active.generation + 1))
    assert (pf.run(udp), pf.run(tcp)) == (XDP_PASS, XDP_DROP)
    assert pf.dp.prefilter_active() == ActiveSet(idle, 1, active.generation + 1)


def test_full_rule_set(pf: Prefilter) -> None:
    rules = [Rule(f"r{i}", Action.COUNT, ipv4=UDP_RULE, l4=L4Match(destination_ports=Range(i, i)))
             for i in range(MAX_RULES - 1)] + [Rule("last", Action.DROP, ipv4=UDP_RULE)]
    encoded = pf.install(rules)
    assert pf.run(frame(IP(src=SRC, dst=DST) / UDP(dport=7))) == XDP_DROP
    assert pf.counted(encoded[7].rule_ref) == (1, 0) and pf.counted(encoded[-1].rule_ref) == (1, 1)


# --- the sanity set -------------------------------------------------------------------------------

MALFORMED: dict[str, Packet | bytes] = {
    "sanity.ip-truncated": bytes(ETH / IP(src=SRC, dst=DST))[:30],
    "sanity.ip-header-length": IP(src=SRC, dst=DST, ihl=4) / Raw(bytes(20)),
    "sanity.ip-total-length-below-header": IP(src=SRC, dst=DST, len=16) / Raw(bytes(20)),
    "sanity.ip-total-length-beyond-frame": IP(src=SRC, dst=DST, len=1000) / UDP(),
    "sanity.ip-reserved-flag": IP(src=SRC, dst=DST, flags="evil") / UDP(),
    "sanity.ip-df-and-mf": IP(src=SRC, dst=DST, flags="DF+MF") / UDP(),
    "sanity.ip-fragment-overflow": IP(src=SRC, dst=DST, frag=8189, proto=17) / Raw(bytes(200)),
    "sanity.ip-ttl-zero": IP(src=SRC, dst=DST, ttl=0) / UDP(),
    "sanity.ip-source-loopback": IP(src="127.0.0.1", dst=DST) / UDP(),
    "sanity.ip-source-multicast": IP(src="224.0.0.9", dst=DST) / UDP(),
    "sanity.ip-source-broadcast": IP(src="255.255.255.255", dst=DST) / UDP(),
    "sanity.tcp-fragment-offset-one": IP(src=SRC, dst=DST, frag=1, proto=6) / Raw(bytes(16)),
    "sanity.tcp-truncated": IP(src=SRC, dst=DST, proto=6) / Raw(bytes(10)),
    "sanity.tcp-data-offset": IP(src=SRC, dst=DST) / TCP(dataofs=3),
    "sanity.tcp-no-flags": IP(src=SRC, dst=DST) / TCP(flags=0),
    "sanity.tcp-syn-fin": IP(src=SRC, dst=DST) / TCP(flags="SF"),
    "sanity.tcp-syn-rst": IP(src=SRC, dst=DST) / TCP(flags="SR"),
    "sanity.tcp-fin-without-ack": IP(src=SRC, dst=DST) / TCP(flags="FP"),
    "sanity.tcp-urg-without-ack": IP(src=SRC, dst=DST) / TCP(flags="U"),
    "sanity.tcp-port-zero-source": IP(src=SRC, dst=DST) / TCP(sport=0, flags="S"),
    "sanity.tcp-port-zero-destination": IP(src=SRC, dst=DST) / TCP(dport=0, flags="S"),
    "sanity.udp-truncated": IP(src=SRC, dst=DST, proto=17) / Raw(bytes(4)),
    "sanity.udp-length": IP(src=SRC, dst=DST) / UDP(len=100) / Raw(bytes(10)),
    "sanity.udp-port-zero-destination": IP(src=SRC, dst=DST) / UDP(dport=0),
}

LEGITIMATE: list[Packet] = [
    IP(src=SRC, dst=DST) / TCP(sport=40000, dport=443, flags="S", options=[("MSS", 1460), ("SAckOK", b""),
                                                                        ("Timestamp", (1, 0)), ("WScale", 7)]),
    IP(src=SRC, dst=DST) / TCP(flags="SA"), IP(src=SRC, dst=DST) / TCP(flags="A"),
    IP(src=SRC, dst=DST) / TCP(flags="PA") / Raw(b"GET / HTTP/1.1\r\n\r\n"),
    IP(src=SRC, dst=DST) / TCP(flags="FA"), IP(src=SRC, dst=DST) / TCP(flags="R"), IP(src=SRC, dst=DST) / TCP(flags="RA"),
    IP(src=SRC, dst=DST) / TCP(flags="UA") / Raw(b"!"), IP(src=SRC, dst=DST, flags="DF") / TCP(flags="SEC"),
    IP(src=SRC, dst=DST) / UDP(sport=0, dport=53) / Raw(bytes(30)),  # source port 0 is allowed in UDP
    IP(src=SRC, dst=DST) / UDP(sport=5353, dport=53) / Raw(bytes(1400)),
    IP(src=SRC, dst=DST, flags="MF") / UDP(sport=5000, dport=53, len=2008) / Raw(bytes(1472)),  # first fragment...
    IP(src=SRC, dst=DST, frag=185, proto=17) / Raw(bytes(528)),  # ...and the last
    IP(src=SRC, dst=DST) / ICMP() / Raw(bytes(56)), IP(src=SRC, dst=DST, ttl=1) / ICMP(type=0),
    IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(bytes(300)),  # DHCP discover
    IP(src=SRC, dst=DST, options=[IPOption_RR(routers=["0.0.0.0"] * 3)]) / ICMP(),
    IP(src=SRC, dst=DST, proto=47) / Raw(bytes(24)), IP(src=SRC, dst=DST) / SCTP(sport=0, dport=0),
]


@pytest.fixture
def sanity(pf: Prefilter) -> dict[str, EncodedRule]:
    return {rule.name: encoded for rule, encoded in zip(SANITY, pf.install(SANITY), strict=True)}


def test_each_sanity_check_drops_its_malformed_frame(pf: Prefilter, sanity: dict[str, EncodedRule]) -> None:
    assert set(MALFORMED) == set(sanity), "one malformed frame per sanity check"
    for name, pkt in MALFORMED.items():
        data = pkt if isinstance(pkt, bytes) else frame(pkt)
        before = pf.counted(sanity[name].rule_ref)
        assert judge(data, pf.rules, {}).ref == sanity[name].rule_ref, name
        assert pf.run(data) == XDP_DROP, name
        assert pf.counted(sanity[name].rule_ref) == (before[0] + 1, before[1] + 1), name


def test_sanity_checks_pass_what_real_stacks_send(pf: Prefilter, sanity: dict[str, EncodedRule]) -> None:
    for pkt in LEGITIMATE:
        data = frame(pkt)
        assert pf.run(data) == XDP_PASS, pkt.summary()
        # Minimum-size frames as a NIC delivers them (padded to 60 bytes) pass too.
        assert pf.run(data.ljust(60, b"\0")) == XDP_PASS, pkt.summary()
    assert all(pf.counted(rule.rule_ref) == (0, 0) for rule in sanity.values())


# --- truncated and malformed frames: the kernel judges exactly as the model ------------------------

FUZZ_RULES = [
    Rule("deny-ish", Action.COUNT, source=IPv4Network("198.51.100.0/25")),
    Rule("ports", Action.COUNT, ipv4=UDP_RULE, l4=L4Match(source_ports=Range(0, 1000), destination_ports=Range(53, 53))),
    Rule("flags", Action.COUNT, ipv4=TCP_RULE, l4=L4Match(tcp_flags=TcpFlags(0x17, 0x02), tcp_data_offset=Range(5, 8))),
    Rule("len", Action.COUNT, ipv4=Ipv4Match(total_length=Range(0, 90), ttl=Range(0, 64), length_mismatch=LengthMismatch.ANY)),
    Rule("frag", Action.COUNT, ipv4=Ipv4Match(fragment=FragmentMatch(more_fragments=True, offset=Range(0, 0)))),
    Rule("payload", Action.COUNT, payload=PayloadMatch(1, b"\x00\x01", b"\x0f\xff", PayloadBase.PAYLOAD)),
    Rule("payload-l4", Action.COUNT, payload=PayloadMatch(0, b"\x00", b"\x80", PayloadBase.L4)),
    Rule("udp-len", Action.COUNT, ipv4=UDP_RULE, l4=L4Match(udp_length_mismatch=True)),
    *SANITY,
    Rule("opts", Action.DROP, ipv4=Ipv4Match(options_present=True, protocol=6), l4=L4Match(destination_ports=Range(1, 1024))),
]


def _seeds() -> list[bytes]:
    return [frame(p) for p in LEGITIMATE] + [p if isinstance(p, bytes) else frame(p) for p in MALFORMED.values()] + [
        frame(IP(src=SRC, dst=DST, options=[IPOption_RR(routers=[])]) / TCP(dport=80, options=[("MSS", 1)])),
        frame(IP(src="198.51.100.1", dst=DST) / UDP(sport=10, dport=53) / Raw(b"\x01\x01\x02")),
    ]


def _check_against_model(pf: Prefilter, data: bytes) -> None:
    expected = judge(data, pf.rules, {})
    refs = sorted({rule.rule_ref for rule in pf.rules})
    before = pf.dp.prefilter_counters(refs)
    verdict = pf.run(data)
    after = pf.dp.prefilter_counters(refs)
    assert verdict == (XDP_PASS if expected.outcome is Outcome.PASS else XDP_DROP), data.hex()
    moved = tuple(ref for ref in refs if after[ref].packets != before[ref].packets)
    assert moved == tuple(sorted(expected.counted)), data.hex()


def test_every_truncation_of_real_and_malformed_frames(pf: Prefilter) -> None:
    pf.install(FUZZ_RULES)
    for seed in _seeds():
        for cut in range(14, len(seed) + 1, 1 if len(seed) < 120 else 7):
            _check_against_model(pf, seed[:cut])


def test_random_headers(pf: Prefilter) -> None:
    pf.install(FUZZ_RULES)
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    seeds = _seeds()
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):  # flip bytes of the IP and L4 headers
            at = rng.randint(14, min(len(data) - 1, 14 + 60 + 24))
            data[at] = rng.randrange(256)
        _check_against_model(pf, bytes(data[: rng.randint(14, len(data))] if rng.random() < 0.3 else data))


# --- drops are flows naming the rule -------------------------------------------------------------

def test_drops_are_flow_events_naming_the_rule(pf: Prefilter) -> None:
    seen: list[FlowEvent] = []
    pf.dp.open_events(lambda raw: seen.append(FlowEvent.from_buffer_copy(raw)))
    pf.dp.poll_events(0)
    seen.clear()
    (rule,) = pf.install([Rule("web", Action.DROP, ipv4=TCP_RULE, l4=L4Match(destination_ports=Range(80, 80)))],
                         {IPv4Network("203.0.113.0/24"): 9})
    for _ in range(5):  # aggregated: one event per flow and reason a second
        pf.run(frame(IP(src=SRC, dst=DST) / TCP(sport=1234, dport=80)))
    pf.run(frame(IP(src="203.0.113.9", dst=DST) / UDP()))
    pf.dp.poll_events(0)
    mine = [ev for ev in seen if ev.reason in (Reason.DROP_PREFILTER_RULE, Reason.DROP_PREFILTER_DENY)]
    assert [(Reason(ev.reason), ev.rule_ref, EventType(ev.type)) for ev in mine] == [
        (Reason.DROP_PREFILTER_RULE, rule.rule_ref, EventType.DROP), (Reason.DROP_PREFILTER_DENY, 9, EventType.DROP)]
    assert (str(field_to_ip(mine[0].saddr)), str(field_to_ip(mine[0].daddr))) == (SRC, DST)
    assert [m.reason for m in pf.dp.metrics() if m.reason.startswith("DROP_PREFILTER")]
