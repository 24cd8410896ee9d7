"""An executable model of the XDP prefilter (bpf/lib/prefilter.h), byte for byte (pure).

`parse` reads a frame as `mb_pf_parse` does (same facts, same fields, same refusal to read
bytes that are not there); `judge` runs the deny list and the encoded rules over it as
`mb_prefilter` does. tests/bpf compares the kernel's verdict and counters with this model on
crafted and random (truncated, malformed) frames, so a parser or matcher change on either side
that the other does not follow fails there. Rate limits are modelled as buckets that never run
dry (the tests of the rate itself measure the kernel).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from membrane.prefilter_rules import PAYLOAD_MAX, Action, EncodedRule, Fact, PayloadBase, RuleFlag

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_MIN_PAYLOAD = 46
TCP, UDP, SCTP = 6, 17, 132


@dataclass(frozen=True)
class Packet:
    """`struct mb_pf_packet`: what the parser found."""

    ipv4: bool = False
    facts: int = 0
    saddr: int = 0  # host-order integers
    daddr: int = 0
    sport: int = 0
    dport: int = 0
    tot_len: int = 0
    frag_off: int = 0
    l4_off: int = 0
    payload_off: int = 0
    protocol: int = 0
    ihl: int = 0
    ttl: int = 0
    tcp_flags: int = 0
    tcp_doff: int = 0
    length: int = 0


def _u16(frame: bytes, at: int) -> int:
    return int.from_bytes(frame[at:at + 2], "big")


def _u32(frame: bytes, at: int) -> int:
    return int.from_bytes(frame[at:at + 4], "big")


def parse(frame: bytes) -> Packet:
    if len(frame) < ETH_HLEN or _u16(frame, 12) != ETH_P_IP:
        return Packet()
    ip = ETH_HLEN
    ip_bytes = len(frame) - ETH_HLEN
    if ip_bytes < 20:
        return Packet(ipv4=True, facts=Fact.TRUNCATED, length=len(frame))
    ihl = frame[ip] & 0x0F
    tot_len = _u16(frame, ip + 2)
    frag = _u16(frame, ip + 6)
    fields = {"ipv4": True, "length": len(frame), "ihl": ihl, "tot_len": tot_len, "ttl": frame[ip + 8],
              "protocol": frame[ip + 9], "saddr": _u32(frame, ip + 12), "daddr": _u32(frame, ip + 16),
              "frag_off": frag & 0x1FFF}
    facts = (frag >> 12) & (Fact.FRAG_RESERVED | Fact.FRAG_DF | Fact.FRAG_MF)
    hdr_len = ihl * 4
    if tot_len > ip_bytes:
        facts |= Fact.LEN_SHORTER | Fact.LEN_MISMATCH
    elif tot_len < ip_bytes and ip_bytes > ETH_MIN_PAYLOAD:
        facts |= Fact.LEN_LONGER | Fact.LEN_MISMATCH
    if tot_len < hdr_len:
        facts |= Fact.LEN_BELOW_HEADER
    elif (frag & 0x1FFF) * 8 + (tot_len - hdr_len) > 65535:
        facts |= Fact.FRAG_OVERFLOW
    l4 = ETH_HLEN + hdr_len
    fields.update(l4_off=l4, payload_off=l4)
    if hdr_len > ip_bytes:
        return Packet(facts=facts | Fact.TRUNCATED, **fields)  # type: ignore[arg-type]  # Packet's fields
    if ihl < 5 or frag & 0x1FFF or tot_len < hdr_len:
        return Packet(facts=facts, **fields)  # type: ignore[arg-type]  # Packet's fields
    avail = min(tot_len, ip_bytes) - hdr_len
    present = len(frame) - l4  # what the program can read directly (one buffer: the whole test frame)
    protocol = frame[ip + 9]
    if protocol == TCP:
        if avail < 20 or present < 20:
            facts |= Fact.L4_TRUNCATED
        else:
            doff = frame[l4 + 12] >> 4
            facts |= Fact.L4
            if doff * 4 > avail:
                facts |= Fact.L4_TRUNCATED
            fields.update(sport=_u16(frame, l4), dport=_u16(frame, l4 + 2), tcp_flags=frame[l4 + 13],
                          tcp_doff=doff, payload_off=l4 + doff * 4)
    elif protocol == UDP:
        if avail < 8 or present < 8:
            facts |= Fact.L4_TRUNCATED
        else:
            facts |= Fact.L4
            if not frag & 0x2000 and _u16(frame, l4 + 4) != tot_len - hdr_len:
                facts |= Fact.UDP_LEN_MISMATCH
            fields.update(sport=_u16(frame, l4), dport=_u16(frame, l4 + 2), payload_off=l4 + 8)
    elif protocol == SCTP and avail >= 12 and present >= 12:
        facts |= Fact.L4
        fields.update(sport=_u16(frame, l4), dport=_u16(frame, l4 + 2), payload_off=l4 + 12)
    return Packet(facts=facts, **fields)  # type: ignore[arg-type]  # Packet's fields


def _within(value: int, low: int, high: int) -> bool:
    return low <= value <= high


def matches(rule: EncodedRule, packet: Packet, frame: bytes) -> bool:
    p = packet
    if (p.facts & rule.facts_mask) != rule.facts_value:
        return False
    if rule.flags & RuleFlag.PROTOCOL and p.protocol != rule.protocol:
        return False
    if (p.saddr & rule.smask) != rule.saddr or (p.daddr & rule.dmask) != rule.daddr:
        return False
    if (p.tcp_flags & rule.tcp_flags_mask) != rule.tcp_flags_value:
        return False
    ranges = ((p.ihl, rule.ihl_min, rule.ihl_max), (p.ttl, rule.ttl_min, rule.ttl_max),
              (p.tot_len, rule.tot_len_min, rule.tot_len_max), (p.frag_off, rule.frag_off_min, rule.frag_off_max),
              (p.sport, rule.sport_min, rule.sport_max), (p.dport, rule.dport_min, rule.dport_max),
              (p.tcp_doff, rule.tcp_doff_min, rule.tcp_doff_max))
    if not all(_within(*r) for r in ranges):
        return False
    if rule.payload_len:
        if rule.payload_len > PAYLOAD_MAX:
            return False
        base = {PayloadBase.IP: ETH_HLEN, PayloadBase.L4: p.l4_off}.get(PayloadBase(rule.payload_base),
                                                                          p.payload_off)
        start = (base + rule.payload_offset) & 0xFFFF
        got = frame[start:start + rule.payload_len]
        if len(got) < rule.payload_len:
            return False
        if any((g & m) != v for g, m, v in zip(got, rule.payload_mask, rule.payload_value, strict=False)):
            return False
    return True


class Outcome(enum.Enum):
    PASS = "pass"
    DROP_RULE = "drop-rule"
    DROP_DENY = "drop-deny"


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    ref: int = 0  # the rule or deny list that dropped
    counted: tuple[int, ...] = field(default=())  # refs whose matched counter went up, in order


def judge(frame: bytes, rules: Sequence[EncodedRule], deny: Mapping[IPv4Network, int]) -> Judgement:
    """What the prefilter does with a frame (ratelimit rules: tokens always left)."""
    packet = parse(frame)
    if not packet.ipv4:
        return Judgement(Outcome.PASS)
    if not packet.facts & Fact.TRUNCATED:
        source = IPv4Address(packet.saddr)
        hits = [net for net in deny if source in net]
        if hits:
            ref = deny[max(hits, key=lambda net: net.prefixlen)]
            return Judgement(Outcome.DROP_DENY, ref, (ref,))
    counted: list[int] = []
    for rule in rules:
        if not matches(rule, packet, frame):
            continue
        counted.append(rule.rule_ref)
        if rule.action == Action.DROP:
            return Judgement(Outcome.DROP_RULE, rule.rule_ref, tuple(counted))
    return Judgement(Outcome.PASS, 0, tuple(counted))
