"""The prefilter's map values: encoded rules, counters and deny-list prefixes <-> ctypes structs.

``membrane.prefilter_rules.encode_rule`` gives a rule's integers (addresses host order); here
they become ``struct mb_prefilter_rule`` (addresses network order, as the datapath compares
them with the packet's bytes). Counters come back summed over CPUs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from membrane.agent.datapath.encoding import field_to_ip, ip_to_field
from membrane.agent.datapath.layout import (
    PREFILTER_ACTIVE_BANK,
    PREFILTER_ACTIVE_COUNT,
    PrefilterCidrKey,
    PrefilterCidrValue,
    PrefilterConfigValue,
    PrefilterCounterValue,
    PrefilterRuleValue,
)
from membrane.prefilter_rules import MAX_RULES, PAYLOAD_MAX, EncodedRule

_ADDRESS_FIELDS = ("saddr", "smask", "daddr", "dmask")
_BYTES_FIELDS = ("payload_value", "payload_mask")


def rule_value(rule: EncodedRule) -> PrefilterRuleValue:
    value = PrefilterRuleValue()
    for field in dataclasses.fields(rule):
        raw = getattr(rule, field.name)
        if field.name in _ADDRESS_FIELDS:
            setattr(value, field.name, ip_to_field(IPv4Address(raw)))
        elif field.name in _BYTES_FIELDS:
            getattr(value, field.name)[:] = list(raw[:PAYLOAD_MAX].ljust(PAYLOAD_MAX, b"\0"))
        else:
            setattr(value, field.name, raw)
    return value


def encoded_rule(value: PrefilterRuleValue) -> EncodedRule:
    fields: dict[str, object] = {}
    for field in dataclasses.fields(EncodedRule):
        raw = getattr(value, field.name)
        if field.name in _ADDRESS_FIELDS:
            fields[field.name] = int(field_to_ip(raw))
        elif field.name in _BYTES_FIELDS:
            fields[field.name] = bytes(raw)
        else:
            fields[field.name] = int(raw)
    return EncodedRule(**fields)  # type: ignore[arg-type]  # every field of EncodedRule, typed as above


@dataclass(frozen=True)
class ActiveSet:
    """``struct mb_prefilter_config``: the bank in force, its rule count, the set's generation."""

    bank: int
    count: int
    generation: int

    def to_struct(self) -> PrefilterConfigValue:
        if self.bank not in (0, 1) or not 0 <= self.count <= MAX_RULES:
            raise ValueError(f"bank {self.bank} / count {self.count}: bank 0 or 1, at most {MAX_RULES} rules")
        active = (PREFILTER_ACTIVE_BANK if self.bank else 0) | self.count
        return PrefilterConfigValue(active=active, generation=self.generation & 0xFFFFFFFF)

    @classmethod
    def from_struct(cls, value: PrefilterConfigValue) -> ActiveSet:
        return cls(1 if value.active & PREFILTER_ACTIVE_BANK else 0, int(value.active & PREFILTER_ACTIVE_COUNT),
                   int(value.generation))


def slot(bank: int, index: int) -> int:
    """Array index of a bank's index-th rule."""
    return bank * MAX_RULES + index


@dataclass(frozen=True)
class RuleCounters:
    """Summed over CPUs: packets and bytes matched, and of those dropped."""

    packets: int = 0
    bytes: int = 0
    dropped_packets: int = 0
    dropped_bytes: int = 0

    @classmethod
    def summed(cls, values: Iterable[PrefilterCounterValue]) -> RuleCounters:
        packets = size = dropped = dropped_size = 0
        for value in values:
            packets += value.packets
            size += value.bytes
            dropped += value.dropped_packets
            dropped_size += value.dropped_bytes
        return cls(packets, size, dropped, dropped_size)


def cidr_key(prefix: IPv4Network) -> PrefilterCidrKey:
    return PrefilterCidrKey(prefixlen=prefix.prefixlen, ip4=ip_to_field(prefix.network_address))


def prefix_of(key: PrefilterCidrKey) -> IPv4Network:
    return IPv4Network((field_to_ip(key.ip4), key.prefixlen), strict=False)


def cidr_value(rule_ref: int) -> PrefilterCidrValue:
    return PrefilterCidrValue(rule_ref=rule_ref)
