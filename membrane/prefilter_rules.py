"""The XDP prefilter's rules and deny lists, and how they become map values (pure: no I/O).

A *rule* matches the shape of an IPv4 packet arriving on a node's device, before the kernel's
stack sees it (`bpf/bpf_xdp.c`, matcher in `bpf/lib/prefilter.h`), and says what to do with it:

- ``drop``: drop it (counted, reported as a flow naming the rule);
- ``count``: count it and let it through (audit: what a drop rule would catch);
- ``ratelimit``: at most ``packets_per_second`` (with a ``burst``) per source address; the
  packets above the rate are dropped, the others go on.

A packet is checked against every rule in order: ``count`` rules and ``ratelimit`` rules whose
source still has tokens count it and go on, the first ``drop`` rule (or emptied rate bucket)
that matches drops it and stops. A packet no rule drops is passed to the stack. Before the rules,
the packet's source address is looked up in the CIDR deny list (longest prefix match): a hit is
dropped at once, counted against its list.

What a rule can say (every part optional; all parts given must hold):

- source / destination: one IPv4 prefix each;
- IPv4 header: protocol; header length range (bytes, 20-60; ``options_present`` is the same as
  a header length above 20); total length range; total length vs. the bytes actually present
  (``shorter``: the frame holds fewer bytes than the total length says; ``longer``: it holds more,
  beyond the Ethernet minimum frame's padding; ``any``: either); fragment flags (reserved, DF,
  MF: each required set, required clear, or not looked at); fragment offset range (in 8-byte
  units, as in the header); TTL range;
- L4 (first fragments only: later fragments carry no L4 header and never match an L4 part):
  source / destination port ranges (TCP, UDP, SCTP); TCP flags under a mask; TCP data offset
  range (32-bit words); UDP length different from the IP payload length (unfragmented
  packets only: a first fragment's UDP length legitimately covers the whole datagram);
- payload: up to ``PAYLOAD_MAX`` bytes at an offset (from the IPv4 header, the L4 header or
  the L4 payload) compared under a mask. A packet too short to hold them does not match.

Packet *facts* the datapath computes once per packet (``Fact``) are what the yes/no parts
compare with: a rule says which facts it looks at (mask) and what they must be (value).
A rule that looks at any header field also requires the header to be complete, and one that
looks at any L4 field requires a complete L4 header, so a truncated packet is never matched
on fields it does not have (it is caught by the ``sanity`` set's truncation rules instead).

Limits (also in README "XDP prefilter"): IPv4 only (IPv6, ARP and VLAN-tagged frames pass
untouched); at most ``MAX_RULES`` rules in force per node, evaluated linearly (cost grows with
the rule count: bench-results/prefilter.md); one prefix per address side per rule (use a deny
list, or several rules, for more); no matching on IP option contents, TCP options or bytes
beyond ``offset + 16``; payload offsets up to ``PAYLOAD_OFFSET_MAX``; rate limits are per
(rule, source address), approximate under concurrent CPUs (buckets are shared and updated
without locks) and forget idle sources when their table (LRU) is full; the CIDR deny list
holds source prefixes only.

``SANITY`` is the built-in set of malformed-header checks (switched on by one setting): every
packet it drops is one no correct IPv4/TCP/UDP stack sends.

The encoder (``encode_rule``) gives the integers of ``struct mb_prefilter_rule`` (bpf/types.h)
as an ``EncodedRule``; the agent's datapath codec packs them. ``rule_ref`` (the counter slot and
the flow events' rule reference) is assigned by the agent's prefilter manager.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Final

MAX_RULES: Final = 256  # MB_PREFILTER_RULES_MAX: rules in force at once (one bank of the rule array)
MAX_REFS: Final = 4096  # MB_PREFILTER_REFS_MAX: counter slots (rules and deny lists), slot 0 unused
PAYLOAD_MAX: Final = 16  # MB_PREFILTER_PAYLOAD_MAX: bytes a payload match compares
PAYLOAD_OFFSET_MAX: Final = 1500  # an offset beyond an Ethernet MTU is no packet shape worth a rule
NAME_MAX: Final = 253  # rule and list names: DNS subdomains (they end up as metric labels)
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

PROTOCOL_NUMBERS: Final = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}
_PORT_PROTOCOLS: Final = frozenset({6, 17, 132})


class PrefilterRuleError(ValueError):
    """A rule or deny list that cannot be enforced: names the field and the reason."""

    def __init__(self, field_path: str, reason: str) -> None:
        super().__init__(f"{field_path}: {reason}")
        self.field, self.reason = field_path, reason


class Action(enum.IntEnum):
    """``enum mb_prefilter_action``."""

    DROP = 1
    COUNT = 2
    RATE_LIMIT = 3

    @property
    def word(self) -> str:
        return {Action.DROP: "drop", Action.COUNT: "count", Action.RATE_LIMIT: "ratelimit"}[self]

    @classmethod
    def of(cls, word: str) -> Action:
        for action in cls:
            if action.word == word:
                return action
        raise ValueError(f"unknown action {word!r}: drop, count or ratelimit")


class Fact(enum.IntFlag):
    """What the datapath finds out about each IPv4 packet once (``MB_PF_F_*``)."""

    TRUNCATED = 0x1  # the frame holds fewer bytes than the IPv4 header needs (20, or the header length)
    FRAG_MF = 0x2  # more fragments (the header's flag bits, shifted: MF, DF, reserved)
    FRAG_DF = 0x4  # don't fragment
    FRAG_RESERVED = 0x8  # the reserved ("evil") flag bit
    LEN_SHORTER = 0x10  # fewer bytes present than the total length says
    LEN_LONGER = 0x20  # more bytes present than the total length says (beyond Ethernet padding)
    LEN_MISMATCH = 0x40  # either of the two
    LEN_BELOW_HEADER = 0x80  # total length smaller than the header length
    FRAG_OVERFLOW = 0x100  # fragment offset * 8 + payload beyond 65535 bytes (ping of death)
    L4 = 0x200  # a complete TCP/UDP/SCTP header is present (first fragment): its fields are valid
    L4_TRUNCATED = 0x400  # first fragment of TCP/UDP whose L4 header (TCP: by data offset) is cut short
    UDP_LEN_MISMATCH = 0x800  # UDP length != IP payload length (unfragmented UDP only)


class RuleFlag(enum.IntFlag):
    """``mb_prefilter_rule.flags`` (``MB_PF_R_*``)."""

    PROTOCOL = 0x1  # compare the protocol


class PayloadBase(enum.IntEnum):
    """Where a payload offset counts from (``MB_PF_BASE_*``)."""

    IP = 0  # the first byte of the IPv4 header
    L4 = 1  # the first byte after the IPv4 header (with its options)
    PAYLOAD = 2  # after the TCP header (by its data offset) or the 8-byte UDP header; L4 otherwise

    @property
    def word(self) -> str:
        return self.name.lower()


class LengthMismatch(enum.Enum):
    """Total length vs. the bytes the frame actually holds."""

    SHORTER = "shorter"
    LONGER = "longer"
    ANY = "any"


@dataclass(frozen=True)
class Range:
    """Inclusive range of an unsigned header field."""

    low: int
    high: int

    def check(self, path: str, lowest: int, highest: int) -> None:
        if not lowest <= self.low <= self.high <= highest:
            raise PrefilterRuleError(path, f"range {self.low}-{self.high} must lie within "
                                           f"{lowest}-{highest}, low <= high")


@dataclass(frozen=True)
class FragmentMatch:
    """Fragment flags (None: not looked at) and offset range (8-byte units)."""

    reserved: bool | None = None
    dont_fragment: bool | None = None
    more_fragments: bool | None = None
    offset: Range | None = None


@dataclass(frozen=True)
class Ipv4Match:
    protocol: int | None = None
    header_length: Range | None = None  # bytes, 20..60 (a multiple of 4 in any real header)
    options_present: bool | None = None
    total_length: Range | None = None
    length_mismatch: LengthMismatch | None = None
    fragment: FragmentMatch | None = None
    ttl: Range | None = None
    total_length_below_header: bool | None = None
    fragment_overflow: bool | None = None  # offset * 8 + payload > 65535
    truncated: bool | None = None  # the frame is shorter than the header (then no other field is read)


@dataclass(frozen=True)
class TcpFlags:
    mask: int
    value: int


@dataclass(frozen=True)
class L4Match:
    source_ports: Range | None = None
    destination_ports: Range | None = None
    tcp_flags: TcpFlags | None = None
    tcp_data_offset: Range | None = None  # 32-bit words (a valid header has 5..15)
    udp_length_mismatch: bool | None = None
    truncated: bool | None = None  # TCP/UDP first fragment whose header is cut short


@dataclass(frozen=True)
class PayloadMatch:
    offset: int
    value: bytes
    mask: bytes | None = None  # same length as value; None: every bit compared
    base: PayloadBase = PayloadBase.PAYLOAD


@dataclass(frozen=True)
class RateLimit:
    packets_per_second: int
    burst: int | None = None  # None: one second's worth


@dataclass(frozen=True)
class Rule:
    """One prefilter rule (see the module docstring). Invalid combinations raise PrefilterRuleError."""

    name: str
    action: Action
    source: IPv4Network | None = None
    destination: IPv4Network | None = None
    ipv4: Ipv4Match = field(default_factory=Ipv4Match)
    l4: L4Match = field(default_factory=L4Match)
    payload: PayloadMatch | None = None
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        _check_rule(self)


def check_name(name: str, path: str) -> None:
    if not (isinstance(name, str) and len(name) <= NAME_MAX and _NAME.match(name)):
        raise PrefilterRuleError(path, f"{name!r} is not a name: lower-case letters, digits, '-' and '.', "
                                       f"starting and ending alphanumeric, at most {NAME_MAX} characters")


def _check_rule(rule: Rule) -> None:
    ip, l4 = rule.ipv4, rule.l4
    if not isinstance(rule.action, Action):
        raise PrefilterRuleError("action", "must be drop, count or ratelimit")
    if (rule.action is Action.RATE_LIMIT) != (rule.rate_limit is not None):
        raise PrefilterRuleError("rateLimit", "given exactly when the action is ratelimit")
    if rule.rate_limit is not None:
        if not 1 <= rule.rate_limit.packets_per_second <= 100_000_000:
            raise PrefilterRuleError("rateLimit.packetsPerSecond", "must be 1-100000000")
        if rule.rate_limit.burst is not None and not 1 <= rule.rate_limit.burst <= 100_000_000:
            raise PrefilterRuleError("rateLimit.burst", "must be 1-100000000")
    if ip.protocol is not None and not 0 <= ip.protocol <= 255:
        raise PrefilterRuleError("ipv4.protocol", "must be 0-255")
    if ip.header_length is not None:
        ip.header_length.check("ipv4.headerLength", 0, 60)
    if ip.header_length is not None and ip.options_present is not None:
        raise PrefilterRuleError("ipv4.optionsPresent", "give headerLength or optionsPresent, not both")
    if ip.total_length is not None:
        ip.total_length.check("ipv4.totalLength", 0, 65535)
    if ip.ttl is not None:
        ip.ttl.check("ipv4.ttl", 0, 255)
    if ip.fragment is not None and ip.fragment.offset is not None:
        ip.fragment.offset.check("ipv4.fragment.offset", 0, 0x1FFF)
    if ip.truncated and _reads_header(rule):
        raise PrefilterRuleError("ipv4.truncated", "a truncated header has no fields to match: "
                                                   "drop the other header, L4 and payload parts")
    ports = l4.source_ports is not None or l4.destination_ports is not None
    for path, rng in (("l4.sourcePorts", l4.source_ports), ("l4.destinationPorts", l4.destination_ports)):
        if rng is not None:
            rng.check(path, 0, 65535)
    if ports and ip.protocol not in _PORT_PROTOCOLS:
        raise PrefilterRuleError("l4", "port ranges need ipv4.protocol tcp, udp or sctp")
    if (l4.tcp_flags is not None or l4.tcp_data_offset is not None) and ip.protocol != 6:
        raise PrefilterRuleError("l4", "TCP flags and data offset need ipv4.protocol tcp")
    if l4.tcp_flags is not None:
        flags = l4.tcp_flags
        if not (0 <= flags.mask <= 255 and 0 <= flags.value <= 255):
            raise PrefilterRuleError("l4.tcpFlags", "mask and value are 8-bit")
        if flags.value & ~flags.mask:
            raise PrefilterRuleError("l4.tcpFlags.value", "sets flags outside the mask (would never match)")
    if l4.tcp_data_offset is not None:
        l4.tcp_data_offset.check("l4.tcpDataOffset", 0, 15)
    if l4.udp_length_mismatch is not None and ip.protocol != 17:
        raise PrefilterRuleError("l4.udpLengthMismatch", "needs ipv4.protocol udp")
    if l4.truncated is not None and ip.protocol not in (6, 17):
        raise PrefilterRuleError("l4.truncated", "needs ipv4.protocol tcp or udp")
    if l4.truncated and (ports or l4.tcp_flags or l4.tcp_data_offset or l4.udp_length_mismatch is not None):
        raise PrefilterRuleError("l4.truncated", "a truncated L4 header has no fields to match")
    if rule.payload is not None:
        _check_payload(rule.payload)


def _check_payload(payload: PayloadMatch) -> None:
    if not 1 <= len(payload.value) <= PAYLOAD_MAX:
        raise PrefilterRuleError("payload.value", f"1 to {PAYLOAD_MAX} bytes")
    if payload.mask is not None and len(payload.mask) != len(payload.value):
        raise PrefilterRuleError("payload.mask", "must be as long as payload.value")
    if not 0 <= payload.offset <= PAYLOAD_OFFSET_MAX:
        raise PrefilterRuleError("payload.offset", f"must be 0-{PAYLOAD_OFFSET_MAX}")
    mask = payload.mask or b"\xff" * len(payload.value)
    if any(v & ~m for v, m in zip(payload.value, mask, strict=True)):
        raise PrefilterRuleError("payload.value", "sets bits outside the mask (would never match)")


def _reads_header(rule: Rule) -> bool:
    ip = rule.ipv4
    return (rule.source is not None or rule.destination is not None or rule.payload is not None
            or any(v is not None for v in (ip.protocol, ip.header_length, ip.options_present, ip.total_length,
                                           ip.length_mismatch, ip.fragment, ip.ttl, ip.total_length_below_header,
                                           ip.fragment_overflow))
            or _reads_l4(rule))


def _reads_l4(rule: Rule) -> bool:
    l4 = rule.l4
    return any(v is not None for v in (l4.source_ports, l4.destination_ports, l4.tcp_flags, l4.tcp_data_offset,
                                       l4.udp_length_mismatch))


# --- encoding: rule -> struct mb_prefilter_rule --------------------------------------------------

@dataclass(frozen=True)
class EncodedRule:
    """The fields of ``struct mb_prefilter_rule`` (bpf/types.h). Addresses and masks are host-order
    integers (the codec stores them in network order); ports are host order, as compared."""

    rule_ref: int
    action: int
    protocol: int = 0
    flags: int = 0
    facts_mask: int = 0
    facts_value: int = 0
    saddr: int = 0
    smask: int = 0
    daddr: int = 0
    dmask: int = 0
    ihl_min: int = 0
    ihl_max: int = 15
    ttl_min: int = 0
    ttl_max: int = 255
    tot_len_min: int = 0
    tot_len_max: int = 65535
    frag_off_min: int = 0
    frag_off_max: int = 0x1FFF
    sport_min: int = 0
    sport_max: int = 65535
    dport_min: int = 0
    dport_max: int = 65535
    tcp_flags_mask: int = 0
    tcp_flags_value: int = 0
    tcp_doff_min: int = 0
    tcp_doff_max: int = 15
    payload_offset: int = 0
    payload_base: int = 0
    payload_len: int = 0
    rate_pps: int = 0
    rate_burst: int = 0
    payload_value: bytes = bytes(PAYLOAD_MAX)
    payload_mask: bytes = bytes(PAYLOAD_MAX)


def _facts(rule: Rule) -> tuple[int, int]:
    """(mask, value) over Fact for the rule's yes/no parts and its header/L4 completeness needs."""
    want: dict[Fact, bool] = {}
    ip, l4 = rule.ipv4, rule.l4
    if ip.truncated is not None:
        want[Fact.TRUNCATED] = ip.truncated
    elif _reads_header(rule):
        want[Fact.TRUNCATED] = False  # never read fields a truncated frame does not have
    if ip.length_mismatch is LengthMismatch.SHORTER:
        want[Fact.LEN_SHORTER] = True
    elif ip.length_mismatch is LengthMismatch.LONGER:
        want[Fact.LEN_LONGER] = True
    elif ip.length_mismatch is LengthMismatch.ANY:
        want[Fact.LEN_MISMATCH] = True
    if ip.fragment is not None:
        for fact, wanted in ((Fact.FRAG_RESERVED, ip.fragment.reserved), (Fact.FRAG_DF, ip.fragment.dont_fragment),
                             (Fact.FRAG_MF, ip.fragment.more_fragments)):
            if wanted is not None:
                want[fact] = wanted
    for fact, wanted in ((Fact.LEN_BELOW_HEADER, ip.total_length_below_header),
                         (Fact.FRAG_OVERFLOW, ip.fragment_overflow), (Fact.UDP_LEN_MISMATCH, l4.udp_length_mismatch),
                         (Fact.L4_TRUNCATED, l4.truncated)):
        if wanted is not None:
            want[fact] = wanted
    if _reads_l4(rule):
        want[Fact.L4] = True  # L4 fields are only read from a complete L4 header
    mask = value = 0
    for fact, wanted in want.items():
        mask |= fact
        value |= fact if wanted else 0
    return mask, value


def _prefix(net: IPv4Network | None) -> tuple[int, int]:
    if net is None:
        return 0, 0
    return int(net.network_address), int(net.netmask)


def encode_rule(rule: Rule, rule_ref: int) -> EncodedRule:
    """The map value of one rule, counting into slot ``rule_ref``."""
    if not 1 <= rule_ref < MAX_REFS:
        raise PrefilterRuleError("ruleRef", f"must be 1-{MAX_REFS - 1}")
    ip, l4 = rule.ipv4, rule.l4
    facts_mask, facts_value = _facts(rule)
    saddr, smask = _prefix(rule.source)
    daddr, dmask = _prefix(rule.destination)
    ihl = (0, 15)
    if ip.header_length is not None:
        # Bytes to whole 32-bit words: a header of 22 bytes does not exist, so 21-23 select nothing new.
        ihl = (-(-ip.header_length.low // 4), ip.header_length.high // 4)
    elif ip.options_present is not None:
        ihl = (6, 15) if ip.options_present else (5, 5)
    fields: dict[str, object] = {
        "rule_ref": rule_ref, "action": int(rule.action), "facts_mask": facts_mask, "facts_value": facts_value,
        "saddr": saddr, "smask": smask, "daddr": daddr, "dmask": dmask, "ihl_min": ihl[0], "ihl_max": ihl[1],
    }
    if ip.protocol is not None:
        fields.update(protocol=ip.protocol, flags=int(RuleFlag.PROTOCOL))
    for prefix, rng in (("ttl", ip.ttl), ("tot_len", ip.total_length),
                        ("frag_off", ip.fragment.offset if ip.fragment else None),
                        ("sport", l4.source_ports), ("dport", l4.destination_ports),
                        ("tcp_doff", l4.tcp_data_offset)):
        if rng is not None:
            fields[f"{prefix}_min"], fields[f"{prefix}_max"] = rng.low, rng.high
    if l4.tcp_flags is not None:
        fields.update(tcp_flags_mask=l4.tcp_flags.mask, tcp_flags_value=l4.tcp_flags.value)
    if rule.payload is not None:
        payload = rule.payload
        mask = payload.mask or b"\xff" * len(payload.value)
        pad = bytes(PAYLOAD_MAX - len(payload.value))
        fields.update(payload_offset=payload.offset, payload_base=int(payload.base), payload_len=len(payload.value),
                      payload_value=bytes(v & m for v, m in zip(payload.value, mask, strict=True)) + pad,
                      payload_mask=mask + pad)
    if rule.rate_limit is not None:
        rate = rule.rate_limit
        fields.update(rate_pps=rate.packets_per_second, rate_burst=rate.burst or rate.packets_per_second)
    return EncodedRule(**fields)  # type: ignore[arg-type]  # keys are EncodedRule's fields, values checked above


# --- the built-in sanity set ---------------------------------------------------------------------

SANITY_PREFIX: Final = "sanity."
_TCP, _UDP = 6, 17
_FIN, _SYN, _RST, _PSH, _ACK, _URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def _sanity(name: str, **parts: object) -> Rule:
    return Rule(name=SANITY_PREFIX + name, action=Action.DROP, **parts)  # type: ignore[arg-type]  # Rule's fields


def _tcp_flags(mask: int, value: int) -> L4Match:
    return L4Match(tcp_flags=TcpFlags(mask, value))


# Each: a header no correct IPv4/TCP/UDP stack sends (RFC 791, 793/9293, 768, 1858).
SANITY: Final[tuple[Rule, ...]] = (
    _sanity("ip-truncated", ipv4=Ipv4Match(truncated=True)),
    _sanity("ip-header-length", ipv4=Ipv4Match(header_length=Range(0, 19))),
    _sanity("ip-total-length-below-header", ipv4=Ipv4Match(total_length_below_header=True)),
    _sanity("ip-total-length-beyond-frame", ipv4=Ipv4Match(length_mismatch=LengthMismatch.SHORTER)),
    _sanity("ip-reserved-flag", ipv4=Ipv4Match(fragment=FragmentMatch(reserved=True))),
    _sanity("ip-df-and-mf", ipv4=Ipv4Match(fragment=FragmentMatch(dont_fragment=True, more_fragments=True))),
    _sanity("ip-fragment-overflow", ipv4=Ipv4Match(fragment_overflow=True)),
    _sanity("ip-ttl-zero", ipv4=Ipv4Match(ttl=Range(0, 0))),
    _sanity("ip-source-loopback", source=IPv4Network("127.0.0.0/8")),
    _sanity("ip-source-multicast", source=IPv4Network("224.0.0.0/4")),
    _sanity("ip-source-broadcast", source=IPv4Network("255.255.255.255/32")),
    _sanity("tcp-fragment-offset-one", ipv4=Ipv4Match(protocol=_TCP, fragment=FragmentMatch(offset=Range(1, 1)))),
    _sanity("tcp-truncated", ipv4=Ipv4Match(protocol=_TCP), l4=L4Match(truncated=True)),
    _sanity("tcp-data-offset", ipv4=Ipv4Match(protocol=_TCP), l4=L4Match(tcp_data_offset=Range(0, 4))),
    _sanity("tcp-no-flags", ipv4=Ipv4Match(protocol=_TCP), l4=_tcp_flags(0xFF, 0)),
    _sanity("tcp-syn-fin", ipv4=Ipv4Match(protocol=_TCP), l4=_tcp_flags(_SYN | _FIN, _SYN | _FIN)),
    _sanity("tcp-syn-rst", ipv4=Ipv4Match(protocol=_TCP), l4=_tcp_flags(_SYN | _RST, _SYN | _RST)),
    _sanity("tcp-fin-without-ack", ipv4=Ipv4Match(protocol=_TCP), l4=_tcp_flags(_FIN | _ACK, _FIN)),
    _sanity("tcp-urg-without-ack", ipv4=Ipv4Match(protocol=_TCP), l4=_tcp_flags(_URG | _ACK, _URG)),
    _sanity("tcp-port-zero-source", ipv4=Ipv4Match(protocol=_TCP), l4=L4Match(source_ports=Range(0, 0))),
    _sanity("tcp-port-zero-destination", ipv4=Ipv4Match(protocol=_TCP), l4=L4Match(destination_ports=Range(0, 0))),
    _sanity("udp-truncated", ipv4=Ipv4Match(protocol=_UDP), l4=L4Match(truncated=True)),
    _sanity("udp-length", ipv4=Ipv4Match(protocol=_UDP), l4=L4Match(udp_length_mismatch=True)),
    _sanity("udp-port-zero-destination", ipv4=Ipv4Match(protocol=_UDP), l4=L4Match(destination_ports=Range(0, 0))),
)


# --- CIDR deny lists -------------------------------------------------------------------------

@dataclass(frozen=True)
class DenyList:
    """Source prefixes dropped on arrival, counted under the list's name."""

    name: str
    prefixes: frozenset[IPv4Network]

    def __post_init__(self) -> None:
        check_name(self.name, "name")


def deny_entries(lists: Iterable[DenyList], refs: Mapping[str, int]) -> dict[IPv4Network, int]:
    """The deny map's contents: prefix -> counter slot of its list. A prefix in several lists counts
    for the first list by name (lists drop the same; the counter is one of theirs)."""
    out: dict[IPv4Network, int] = {}
    for deny in sorted(lists, key=lambda d: d.name):
        ref = refs[deny.name]
        for prefix in deny.prefixes:
            out.setdefault(prefix, ref)
    return out


def parse_prefix(text: str, path: str) -> IPv4Network:
    """One IPv4 prefix (a bare address is its /32); host bits set are refused, not masked."""
    try:
        return IPv4Network(text.strip(), strict=True)
    except ValueError as exc:
        raise PrefilterRuleError(path, f"{text.strip()!r} is not an IPv4 prefix ({exc})") from None


def parse_cidr_file(text: str, source: str = "file") -> frozenset[IPv4Network]:
    """A plain deny list: one prefix per line; blank lines and text after '#' are ignored."""
    found: set[IPv4Network] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if entry:
            found.add(parse_prefix(entry, f"{source}:{number}"))
    return frozenset(found)


def rule_names(rules: Sequence[Rule]) -> list[str]:
    """Names of rules, refusing duplicates (a name is the counter's identity)."""
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if rule.name in seen:
            raise PrefilterRuleError(f"rules[{index}].name", f"{rule.name!r} is used twice")
        seen.add(rule.name)
    return [rule.name for rule in rules]
