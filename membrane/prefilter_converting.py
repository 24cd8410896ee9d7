"""PacketFilter and CIDRDenyList records -> the XDP prefilter's rule model (pure).

The stream carries checked specs (membrane/prefilter_objects.py, `PacketFilterState`,
`CIDRDenyListState`); the agent's prefilter manager turns them into what it writes to the maps
with `desired_rules` and `deny_lists` (membrane/prefilter_rules.py's `Rule` and `DenyList`).

- A rule of filter `f` named `r` is the model's rule `f.r` (its counters and flows carry that
  name); the built-in sanity checks are `sanity.*`, so no filter may be named `sanity`.
- Rules are checked in this order on every node: the sanity checks (when any filter switches
  them on: Drop if one says Drop, else Count), then the filters by name, each filter's rules in
  its order. Only a Drop (or an emptied rate bucket) stops the walk, so the order decides which
  rule a drop is counted against, never whether a packet dropped by one rule passes.
- A `tcp`/`udp`/`sctp` part sets the protocol it implies; ranges left open at one end take the
  field's limit.

`spec_rules` raises `RuleConversionError` naming the spec's field (`spec.rules[2].tcp.flags`)
when the model refuses a rule the schema let through; prefilter_checking turns that into the
same "field: reason" as every other refusal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from ipaddress import IPv4Network
from typing import Any

from membrane.api.state_objects import CIDRDenyChunkState, CIDRDenyListState, PacketFilterState
from membrane.prefilter_objects import OFFSET_BASES, PROTOCOL_NAMES, TCP_FLAGS, cidr_parts
from membrane.prefilter_rules import (
    SANITY,
    SANITY_PREFIX,
    Action,
    DenyList,
    FragmentMatch,
    Ipv4Match,
    L4Match,
    LengthMismatch,
    PayloadBase,
    PayloadMatch,
    PrefilterRuleError,
    Range,
    RateLimit,
    Rule,
    TcpFlags,
)

SANITY_FILTER = SANITY_PREFIX.rstrip(".")  # the name no PacketFilter may take
_ACTIONS = {"Drop": Action.DROP, "Count": Action.COUNT, "RateLimit": Action.RATE_LIMIT}
_BASES = dict(zip(OFFSET_BASES, (PayloadBase.IP, PayloadBase.L4, PayloadBase.PAYLOAD), strict=True))
_MISMATCH = {"Shorter": LengthMismatch.SHORTER, "Longer": LengthMismatch.LONGER, "Any": LengthMismatch.ANY}
# TCP flag bits in header order (FIN is bit 0); TCP_FLAGS lists them in that order.
_FLAG_BITS = {name: 1 << bit for bit, name in enumerate(TCP_FLAGS)}
_L4_SECTIONS = ("tcp", "udp", "sctp")
# Where the model's field names are this API's (the model says `l4.*`, the spec `tcp.*`, ...).
_MODEL_PATHS = {"l4.sourcePorts": "{l4}.sourcePort", "l4.destinationPorts": "{l4}.destinationPort",
                "l4.tcpFlags": "tcp.flags", "l4.tcpFlags.value": "tcp.flags.value",
                "l4.tcpDataOffset": "tcp.dataOffset", "l4.udpLengthMismatch": "udp.lengthMismatch",
                "l4.truncated": "{l4}.truncated", "l4": "{l4}", "rateLimit.packetsPerSecond":
                "rateLimit.packetsPerSecond", "ipv4.fragment.offset": "ipv4.fragment.offset"}


class RuleConversionError(ValueError):
    """A rule the model refuses; `field` is the spec's path."""

    def __init__(self, field_path: str, reason: str) -> None:
        super().__init__(f"{field_path}: {reason}")
        self.field, self.reason = field_path, reason


def rule_name(filter_name: str, rule: str) -> str:
    return f"{filter_name}.{rule}"


def _range(part: Mapping[str, Any] | None, highest: int) -> Range | None:
    if part is None:
        return None
    return Range(int(part.get("min", 0)), int(part.get("max", highest)))


def _flag_bits(names: Iterable[str]) -> int:
    return sum(_FLAG_BITS[name] for name in set(names))


def _ipv4(part: Mapping[str, Any], protocol: int | None) -> Ipv4Match:
    fragment = part.get("fragment")
    mismatch = part.get("lengthMismatch")
    return Ipv4Match(
        protocol=protocol, header_length=_range(part.get("headerLength"), 60),
        options_present=part.get("optionsPresent"), total_length=_range(part.get("totalLength"), 65535),
        length_mismatch=_MISMATCH[mismatch] if mismatch else None,
        fragment=None if fragment is None else FragmentMatch(
            reserved=fragment.get("reserved"), dont_fragment=fragment.get("dontFragment"),
            more_fragments=fragment.get("moreFragments"), offset=_range(fragment.get("offset"), 0x1FFF)),
        ttl=_range(part.get("ttl"), 255), total_length_below_header=part.get("totalLengthBelowHeader"),
        fragment_overflow=(fragment or {}).get("overflow"), truncated=part.get("truncated"))


def _l4(section: str | None, part: Mapping[str, Any]) -> L4Match:
    if section is None:
        return L4Match()
    flags = part.get("flags")
    return L4Match(
        source_ports=_range(part.get("sourcePort"), 65535), destination_ports=_range(part.get("destinationPort"), 65535),
        tcp_flags=None if flags is None else TcpFlags(_flag_bits(flags["mask"]), _flag_bits(flags.get("value", ()))),
        tcp_data_offset=_range(part.get("dataOffset"), 15), udp_length_mismatch=part.get("lengthMismatch"),
        truncated=part.get("truncated"))


def _protocol(rule: Mapping[str, Any], section: str | None) -> int | None:
    given = (rule.get("ipv4") or {}).get("protocol")
    number = PROTOCOL_NAMES[given] if isinstance(given, str) else given
    implied = PROTOCOL_NAMES[section.upper()] if section else None
    if number is not None and section is not None and number != implied:
        raise RuleConversionError("ipv4.protocol", f"Invalid value: {json.dumps(given)}: the rule has a {section} "
                                                   f"part, so its protocol is {section.upper()}")
    return number if number is not None else implied


def _rule(filter_name: str, spec: Mapping[str, Any]) -> Rule:
    section = next((s for s in _L4_SECTIONS if s in spec), None)
    payload = spec.get("payload")
    rate = spec.get("rateLimit")
    try:
        return Rule(
            name=rule_name(filter_name, spec["name"]), action=_ACTIONS[spec["action"]],
            source=IPv4Network(spec["source"]) if "source" in spec else None,
            destination=IPv4Network(spec["destination"]) if "destination" in spec else None,
            ipv4=_ipv4(spec.get("ipv4") or {}, _protocol(spec, section)),
            l4=_l4(section, spec.get(section) or {} if section else {}),
            payload=None if payload is None else PayloadMatch(
                offset=int(payload["offset"]), value=bytes.fromhex(payload["value"]),
                mask=bytes.fromhex(payload["mask"]) if "mask" in payload else None,
                base=_BASES[payload.get("offsetFrom", "Payload")]),
            rate_limit=None if rate is None else RateLimit(int(rate["packetsPerSecond"]), rate.get("burst")))
    except PrefilterRuleError as exc:
        where = "name" if exc.field == "name" else _MODEL_PATHS.get(exc.field, exc.field).format(l4=section or "l4")
        reason = exc.reason
        if exc.field == "name":
            reason = f"with the filter's name ({rule_name(filter_name, spec['name'])!r}) longer than 253 characters"
        raise RuleConversionError(where, reason) from None


def spec_rules(filter_name: str, spec: Mapping[str, Any]) -> list[Rule]:
    """A checked PacketFilter spec's rules in the model; RuleConversionError names the field."""
    rules = []
    for index, rule in enumerate(spec.get("rules") or []):
        try:
            rules.append(_rule(filter_name, rule))
        except RuleConversionError as exc:
            raise RuleConversionError(f"spec.rules[{index}].{exc.field}", exc.reason) from None
    return rules


def filter_rules(record: PacketFilterState) -> list[Rule]:
    return spec_rules(record.name, json.loads(record.spec_json))


def sanity_action(filters: Iterable[PacketFilterState]) -> Action | None:
    """Drop if any filter asks for Drop, Count if any asks for Count, else None (off)."""
    asked = {json.loads(f.spec_json).get("sanityChecks") for f in filters}
    return Action.DROP if "Drop" in asked else Action.COUNT if "Count" in asked else None


def sanity_rules(action: Action | None) -> list[Rule]:
    if action is None:
        return []
    return [rule if rule.action is action else replace(rule, action=action) for rule in SANITY]


def desired_rules(filters: Iterable[PacketFilterState]) -> list[Rule]:
    """Every rule a node enforces, in order: sanity checks (if on), then filters by name."""
    ordered = sorted(filters, key=lambda f: f.name)
    rules = sanity_rules(sanity_action(ordered))
    for record in ordered:
        rules.extend(filter_rules(record))
    return rules


def deny_prefixes(cidrs: Iterable[str]) -> frozenset[IPv4Network]:
    """One chunk's (or an old whole-list record's) prefixes in the model's form."""
    return frozenset(IPv4Network(cidr_parts(c)) for c in cidrs)


def deny_list(record: CIDRDenyListState) -> DenyList:
    return DenyList(record.name, deny_prefixes(record.cidrs))


def deny_lists(records: Iterable[CIDRDenyListState | CIDRDenyChunkState]) -> list[DenyList]:
    """Each list whose head is among `records`, with the prefixes of its chunks among them."""
    heads: dict[str, CIDRDenyListState] = {}
    chunks: dict[str, list[str]] = {}
    for record in records:
        if isinstance(record, CIDRDenyChunkState):
            chunks.setdefault(record.list, []).extend(record.cidrs)
        else:
            heads[record.name] = record
    return [DenyList(name, deny_prefixes((*head.cidrs, *chunks.get(name, ()))))
            for name, head in sorted(heads.items())]
