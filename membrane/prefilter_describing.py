"""One line that says what a prefilter rule matches (pure), for `membranectl prefilter list`.

Written the way the PacketFilter spec names things (`udp dport 53`, `ttl 0-1`, `flags SYN/SYN,ACK`),
parts in the order the datapath checks them; a rule with no parts matches every IPv4 packet.
"""

from __future__ import annotations

from membrane.prefilter_objects import TCP_FLAGS
from membrane.prefilter_rules import PayloadBase, Range, Rule

_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 132: "sctp"}
_BASES = {PayloadBase.IP: "ip", PayloadBase.L4: "l4", PayloadBase.PAYLOAD: "payload"}


def _range(rng: Range) -> str:
    return str(rng.low) if rng.low == rng.high else f"{rng.low}-{rng.high}"


def _flags(bits: int) -> str:
    return ",".join(name for index, name in enumerate(TCP_FLAGS) if bits & (1 << index)) or "none"


def _yes(flag: bool) -> str:
    return "" if flag else "!"


def describe(rule: Rule) -> str:
    ip, l4 = rule.ipv4, rule.l4
    parts: list[str] = []
    if ip.truncated is not None:
        parts.append(f"{_yes(ip.truncated)}truncated")
    if ip.protocol is not None:
        parts.append(_PROTOCOLS.get(ip.protocol, f"proto {ip.protocol}"))
    if rule.source is not None:
        parts.append(f"src {rule.source}")
    if rule.destination is not None:
        parts.append(f"dst {rule.destination}")
    if ip.header_length is not None:
        parts.append(f"hlen {_range(ip.header_length)}")
    if ip.options_present is not None:
        parts.append(f"{_yes(ip.options_present)}options")
    if ip.total_length is not None:
        parts.append(f"totlen {_range(ip.total_length)}")
    if ip.length_mismatch is not None:
        parts.append(f"frame {ip.length_mismatch.value}")
    if ip.total_length_below_header is not None:
        parts.append(f"{_yes(ip.total_length_below_header)}totlen<hlen")
    if ip.ttl is not None:
        parts.append(f"ttl {_range(ip.ttl)}")
    frag = ip.fragment
    if frag is not None:
        for label, value in (("RF", frag.reserved), ("DF", frag.dont_fragment), ("MF", frag.more_fragments)):
            if value is not None:
                parts.append(f"{_yes(value)}{label}")
        if frag.offset is not None:
            parts.append(f"fragoff {_range(frag.offset)}")
    if ip.fragment_overflow is not None:
        parts.append(f"{_yes(ip.fragment_overflow)}frag-overflow")
    if l4.truncated is not None:
        parts.append(f"{_yes(l4.truncated)}l4-truncated")
    if l4.source_ports is not None:
        parts.append(f"sport {_range(l4.source_ports)}")
    if l4.destination_ports is not None:
        parts.append(f"dport {_range(l4.destination_ports)}")
    if l4.tcp_flags is not None:
        parts.append(f"flags {_flags(l4.tcp_flags.value)}/{_flags(l4.tcp_flags.mask)}")
    if l4.tcp_data_offset is not None:
        parts.append(f"doff {_range(l4.tcp_data_offset)}")
    if l4.udp_length_mismatch is not None:
        parts.append(f"{_yes(l4.udp_length_mismatch)}udp-len-mismatch")
    if rule.payload is not None:
        payload = rule.payload
        mask = f"/{payload.mask.hex()}" if payload.mask is not None else ""
        parts.append(f"{_BASES[payload.base]}+{payload.offset} {payload.value.hex()}{mask}")
    if rule.rate_limit is not None:
        rate = rule.rate_limit
        parts.append(f"> {rate.packets_per_second}/s per source" + (f" (burst {rate.burst})" if rate.burst else ""))
    return " ".join(parts) or "any ipv4"
