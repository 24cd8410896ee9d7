"""Stream records of PacketFilter/CIDRDenyList -> the XDP prefilter's rule model: every field
lands where the datapath reads it, the order and the sanity switch are as documented."""

from __future__ import annotations

import json
from ipaddress import IPv4Network
from typing import Any

import pytest

from membrane.api.state_objects import CIDRDenyListState, PacketFilterState
from membrane.operator.state_building import packet_filter_state
from membrane.prefilter_converting import (
    deny_lists,
    desired_rules,
    filter_rules,
    sanity_action,
    spec_rules,
)
from membrane.prefilter_rules import (
    SANITY,
    Action,
    DenyList,
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

from .test_prefilter_objects import VALID, packet_filter


def record(name: str, **spec: Any) -> PacketFilterState:
    return packet_filter_state(packet_filter(name, **spec))


def test_every_field_of_a_rule_reaches_the_model() -> None:
    rules = spec_rules("cve", VALID["spec"])
    assert [r.name for r in rules] == ["cve.frag-of-death", "cve.syn-flood", "cve.audit-icmp", "cve.sctp-probe",
                                       "cve.runt"]
    assert rules[0] == Rule(
        name="cve.frag-of-death", action=Action.DROP, source=IPv4Network("198.51.0.0/16"),
        destination=IPv4Network("10.0.0.7/32"),
        ipv4=Ipv4Match(protocol=17, header_length=Range(24, 60), total_length=Range(0, 100),
                       length_mismatch=LengthMismatch.SHORTER, total_length_below_header=False,
                       fragment=FragmentMatch(reserved=False, dont_fragment=False, more_fragments=True,
                                              offset=Range(0, 0)),
                       ttl=Range(1, 3), fragment_overflow=False),
        l4=L4Match(source_ports=Range(0, 1023), destination_ports=Range(53, 53), udp_length_mismatch=True),
        payload=PayloadMatch(offset=8, value=bytes.fromhex("dead00ef"), mask=bytes.fromhex("ffff00ff"),
                             base=PayloadBase.L4))
    assert rules[1] == Rule(
        name="cve.syn-flood", action=Action.RATE_LIMIT, ipv4=Ipv4Match(protocol=6, options_present=False),
        l4=L4Match(destination_ports=Range(80, 443), tcp_flags=TcpFlags(0x12, 0x02), tcp_data_offset=Range(0, 15)),
        rate_limit=RateLimit(1000, 50))
    assert rules[2].ipv4 == Ipv4Match(protocol=1) and rules[2].action is Action.COUNT
    assert rules[3].ipv4.protocol == 132 and rules[3].l4.destination_ports == Range(9, 65535)  # implied by sctp
    assert rules[4].ipv4 == Ipv4Match(truncated=True)
    for ref, rule in enumerate(rules, start=1):
        assert encode_rule(rule, ref).rule_ref == ref  # the datapath encoder takes every one


def test_a_record_gives_the_rules_of_its_spec() -> None:
    state = packet_filter_state(VALID)
    assert filter_rules(state) == spec_rules("cve", VALID["spec"])


def test_sanity_checks_come_first_and_drop_wins() -> None:
    a = record("a", rules=[{"name": "x", "action": "Count"}])
    b = record("b", sanityChecks="Count", rules=[{"name": "y", "action": "Drop", "source": "192.0.2.0/24"}])
    c = record("c", sanityChecks="Drop")
    assert sanity_action([a]) is None
    assert sanity_action([a, b]) is Action.COUNT
    assert sanity_action([a, b, c]) is Action.DROP
    counted = desired_rules([b, a])  # filters by name, whatever the order given
    assert [r.name for r in counted] == [r.name for r in SANITY] + ["a.x", "b.y"]
    assert {r.action for r in counted[:len(SANITY)]} == {Action.COUNT}
    dropping = desired_rules([c, b, a])
    assert dropping[:len(SANITY)] == list(SANITY)
    assert desired_rules([a]) == [Rule("a.x", Action.COUNT)]


def test_deny_lists_by_name() -> None:
    lists = deny_lists([CIDRDenyListState("z", 2, ("10.0.0.0/8",)),
                        CIDRDenyListState("a", 1, ("192.0.2.1/32", "198.51.100.0/24"))])
    assert lists == [DenyList("a", frozenset({IPv4Network("192.0.2.1/32"), IPv4Network("198.51.100.0/24")})),
                     DenyList("z", frozenset({IPv4Network("10.0.0.0/8")}))]


@pytest.mark.parametrize("flags", [["SYN"], ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"]])
def test_tcp_flag_names_are_header_bits(flags: list[str]) -> None:
    (rule,) = spec_rules("f", {"rules": [{"name": "r", "action": "Drop", "tcp": {"flags": {"mask": flags, "value": flags}}}]})
    bits = {"FIN": 1, "SYN": 2, "RST": 4, "PSH": 8, "ACK": 16, "URG": 32, "ECE": 64, "CWR": 128}
    assert rule.l4.tcp_flags == TcpFlags(sum(bits[f] for f in flags), sum(bits[f] for f in flags))
    assert json.loads(record("f", rules=[{"name": "r", "action": "Drop"}]).spec_json)["rules"][0]["name"] == "r"
