"""The prefilter rule model (membrane.prefilter_rules): validation names the field, encoding gives
the C struct's integers, the sanity set and the deny lists."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from membrane.prefilter_rules import (
    MAX_REFS,
    SANITY,
    Action,
    DenyList,
    Fact,
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
    RuleFlag,
    TcpFlags,
    deny_entries,
    encode_rule,
    parse_cidr_file,
    rule_names,
)

TCP = Ipv4Match(protocol=6)
UDP = Ipv4Match(protocol=17)


@pytest.mark.parametrize(("parts", "field"), [
    ({"name": "Bad_Name"}, "name"),
    ({"action": Action.RATE_LIMIT}, "rateLimit"),
    ({"rate_limit": RateLimit(10)}, "rateLimit"),
    ({"action": Action.RATE_LIMIT, "rate_limit": RateLimit(0)}, "rateLimit.packetsPerSecond"),
    ({"ipv4": Ipv4Match(protocol=300)}, "ipv4.protocol"),
    ({"ipv4": Ipv4Match(header_length=Range(20, 64))}, "ipv4.headerLength"),
    ({"ipv4": Ipv4Match(header_length=Range(24, 20))}, "ipv4.headerLength"),
    ({"ipv4": Ipv4Match(header_length=Range(20, 24), options_present=True)}, "ipv4.optionsPresent"),
    ({"ipv4": Ipv4Match(ttl=Range(0, 256))}, "ipv4.ttl"),
    ({"ipv4": Ipv4Match(fragment=FragmentMatch(offset=Range(0, 0x2000)))}, "ipv4.fragment.offset"),
    ({"ipv4": Ipv4Match(truncated=True, protocol=6)}, "ipv4.truncated"),
    ({"l4": L4Match(destination_ports=Range(80, 80))}, "l4"),
    ({"ipv4": Ipv4Match(protocol=1), "l4": L4Match(source_ports=Range(1, 2))}, "l4"),
    ({"ipv4": UDP, "l4": L4Match(tcp_flags=TcpFlags(2, 2))}, "l4"),
    ({"ipv4": TCP, "l4": L4Match(tcp_flags=TcpFlags(2, 3))}, "l4.tcpFlags.value"),
    ({"ipv4": TCP, "l4": L4Match(tcp_data_offset=Range(0, 16))}, "l4.tcpDataOffset"),
    ({"ipv4": TCP, "l4": L4Match(udp_length_mismatch=True)}, "l4.udpLengthMismatch"),
    ({"ipv4": TCP, "l4": L4Match(truncated=True, destination_ports=Range(1, 1))}, "l4.truncated"),
    ({"payload": PayloadMatch(0, b"")}, "payload.value"),
    ({"payload": PayloadMatch(0, bytes(17))}, "payload.value"),
    ({"payload": PayloadMatch(0, b"ab", b"\xff")}, "payload.mask"),
    ({"payload": PayloadMatch(0, b"\x0f", b"\xf0")}, "payload.value"),
    ({"payload": PayloadMatch(1501, b"a")}, "payload.offset"),
])
def test_invalid_rules_name_the_field(parts: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"name": "r", "action": Action.DROP, **parts}
    with pytest.raises(PrefilterRuleError) as err:
        Rule(**args)  # type: ignore[arg-type]  # the table's values are Rule's fields
    assert err.value.field == field, str(err.value)
    assert str(err.value).startswith(f"{field}: ")


def test_a_rule_reading_fields_requires_a_complete_header_and_l4() -> None:
    rule = Rule("r", Action.DROP, ipv4=TCP, l4=L4Match(destination_ports=Range(80, 90),
                                                      tcp_flags=TcpFlags(0x12, 0x02)))
    enc = encode_rule(rule, 7)
    assert enc.facts_mask == Fact.TRUNCATED | Fact.L4 and enc.facts_value == Fact.L4
    assert (enc.protocol, enc.flags) == (6, RuleFlag.PROTOCOL)
    assert (enc.dport_min, enc.dport_max, enc.sport_min, enc.sport_max) == (80, 90, 0, 65535)
    assert (enc.tcp_flags_mask, enc.tcp_flags_value, enc.rule_ref, enc.action) == (0x12, 0x02, 7, Action.DROP)


def test_encoding_of_header_fields() -> None:
    rule = Rule("r", Action.COUNT, source=IPv4Network("10.1.0.0/16"), destination=IPv4Network("192.0.2.7/32"),
                ipv4=Ipv4Match(header_length=Range(21, 40), total_length=Range(100, 200), ttl=Range(1, 3),
                               length_mismatch=LengthMismatch.ANY,
                               fragment=FragmentMatch(dont_fragment=False, more_fragments=True,
                                                      offset=Range(0, 5))))
    enc = encode_rule(rule, 1)
    assert (enc.saddr, enc.smask) == (0x0A010000, 0xFFFF0000)
    assert (enc.daddr, enc.dmask) == (0xC0000207, 0xFFFFFFFF)
    assert (enc.ihl_min, enc.ihl_max) == (6, 10)  # whole words: 21 bytes is no header, 24 is
    assert (enc.tot_len_min, enc.tot_len_max, enc.ttl_min, enc.ttl_max) == (100, 200, 1, 3)
    assert (enc.frag_off_min, enc.frag_off_max) == (0, 5)
    assert enc.facts_mask == Fact.TRUNCATED | Fact.LEN_MISMATCH | Fact.FRAG_DF | Fact.FRAG_MF
    assert enc.facts_value == Fact.LEN_MISMATCH | Fact.FRAG_MF
    assert enc.flags == 0  # protocol not compared


def test_options_present_is_a_header_length_range() -> None:
    with_options = encode_rule(Rule("r", Action.DROP, ipv4=Ipv4Match(options_present=True)), 1)
    without = encode_rule(Rule("r", Action.DROP, ipv4=Ipv4Match(options_present=False)), 1)
    assert (with_options.ihl_min, with_options.ihl_max, without.ihl_min, without.ihl_max) == (6, 15, 5, 5)


def test_payload_is_padded_to_the_compared_width() -> None:
    rule = Rule("r", Action.DROP, payload=PayloadMatch(4, b"\xa0\xcd", b"\xf0\xff", PayloadBase.L4))
    enc = encode_rule(rule, 1)
    assert enc.payload_value == b"\xa0\xcd" + bytes(14)
    assert enc.payload_mask == b"\xf0\xff" + bytes(14)
    assert (enc.payload_offset, enc.payload_len, enc.payload_base) == (4, 2, PayloadBase.L4)
    assert enc.facts_mask == Fact.TRUNCATED and enc.facts_value == 0


def test_rate_limit_burst_defaults_to_one_second() -> None:
    enc = encode_rule(Rule("r", Action.RATE_LIMIT, rate_limit=RateLimit(500)), 1)
    assert (enc.rate_pps, enc.rate_burst) == (500, 500)
    assert encode_rule(Rule("r", Action.RATE_LIMIT, rate_limit=RateLimit(500, 20)), 1).rate_burst == 20
    # Matching nothing in particular reads no header: it is not even required to be complete.
    assert enc.facts_mask == 0


@pytest.mark.parametrize("ref", [0, MAX_REFS])
def test_rule_refs_are_bounded(ref: int) -> None:
    with pytest.raises(PrefilterRuleError):
        encode_rule(Rule("r", Action.DROP), ref)


def test_sanity_rules_are_drop_rules_with_unique_names() -> None:
    assert all(rule.action is Action.DROP for rule in SANITY)
    assert len(rule_names(SANITY)) == len(SANITY)
    assert all(rule.name.startswith("sanity.") for rule in SANITY)
    truncated = next(r for r in SANITY if r.name == "sanity.ip-truncated")
    assert encode_rule(truncated, 1).facts_value == Fact.TRUNCATED


def test_duplicate_rule_names_are_refused() -> None:
    with pytest.raises(PrefilterRuleError, match=r"rules\[1\].name"):
        rule_names([Rule("a", Action.DROP), Rule("a", Action.COUNT)])


def test_deny_lists_and_files() -> None:
    text = "# bad actors\n10.0.0.0/8\n\n192.0.2.1  # one host\n10.0.0.0/8\n"
    assert parse_cidr_file(text) == {IPv4Network("10.0.0.0/8"), IPv4Network("192.0.2.1/32")}
    with pytest.raises(PrefilterRuleError, match=r"^deny.txt:2: '10.0.0.1/8' is not an IPv4 prefix"):
        parse_cidr_file("1.2.3.0/24\n10.0.0.1/8\n", "deny.txt")
    lists = [DenyList("b", frozenset({IPv4Network("10.0.0.0/8")})),
             DenyList("a", frozenset({IPv4Network("10.0.0.0/8"), IPv4Network("1.0.0.0/8")}))]
    assert deny_entries(lists, {"a": 3, "b": 4}) == {IPv4Network("10.0.0.0/8"): 3, IPv4Network("1.0.0.0/8"): 3}
    with pytest.raises(PrefilterRuleError, match="^name: "):
        DenyList("Not OK", frozenset())
