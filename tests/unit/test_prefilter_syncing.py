"""The prefilter manager (agent/prefilter_syncing.py) against a fake datapath: rules go to the idle
bank and one switch puts them in force, deny lists are written by difference, counter slots are
stable and zeroed for new owners, a restarted manager adopts what the kernel enforces, and an
update the datapath cannot hold is refused with nothing written."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv4Network
from typing import Any

import pytest

from membrane.agent.datapath.prefilter import ActiveSet, RuleCounters
from membrane.agent.map_managing import MapCapacityError
from membrane.agent.prefilter_syncing import PrefilterManager, RuleCapacityError
from membrane.api.state_objects import CIDRDenyListState, Kind, PacketFilterState
from membrane.prefilter_rules import MAX_RULES, SANITY, EncodedRule


class FakePrefilter:
    """Two banks, the active word, counters and the deny map, as the datapath keeps them."""

    def __init__(self, cidr_capacity: int = 1000) -> None:
        self.banks: list[list[EncodedRule]] = [[], []]
        self.active = ActiveSet(0, 0, 0)
        self.counters: dict[int, RuleCounters] = {}
        self.cidr: dict[IPv4Network, int] = {}
        self.cidr_capacity = cidr_capacity
        self.log: list[str] = []

    def capacity(self, role: str) -> int | None:
        return self.cidr_capacity

    def read_map(self, role: str) -> dict[Any, Any]:
        return dict(self.cidr)

    def update_map(self, role: str, entries: Mapping[Any, Any]) -> None:
        self.log.append(f"cidr+{len(entries)}")
        self.cidr.update(entries)

    def delete_map(self, role: str, keys: Sequence[Any]) -> int:
        self.log.append(f"cidr-{len(keys)}")
        return sum(self.cidr.pop(k, None) is not None for k in keys)

    def prefilter_active(self) -> ActiveSet:
        return self.active

    def set_prefilter_active(self, active: ActiveSet) -> None:
        assert len(self.banks[active.bank]) >= active.count, "switched to a bank not written"
        self.log.append(f"switch{active.bank}")
        self.active = active

    def write_prefilter_rules(self, bank: int, rules: Sequence[EncodedRule]) -> None:
        assert bank != self.active.bank or self.active.count == 0, "wrote the bank in force"
        self.log.append(f"bank{bank}")
        self.banks[bank] = list(rules) + self.banks[bank][len(rules):]

    def prefilter_rules(self, bank: int, count: int) -> list[EncodedRule]:
        return self.banks[bank][:count]

    def prefilter_counters(self, refs: Iterable[int]) -> dict[int, RuleCounters]:
        return {ref: self.counters.get(ref, RuleCounters()) for ref in refs}

    def reset_prefilter_counters(self, refs: Iterable[int]) -> None:
        for ref in refs:
            self.counters.pop(ref, None)

    def in_force(self) -> list[EncodedRule]:
        return self.banks[self.active.bank][:self.active.count]


def packet_filter(name: str, rules: list[dict[str, Any]], sanity: str | None = None) -> PacketFilterState:
    spec: dict[str, Any] = {"rules": rules}
    if sanity:
        spec["sanityChecks"] = sanity
    return PacketFilterState(name, 1, json.dumps(spec, sort_keys=True))


def deny(name: str, *cidrs: str) -> CIDRDenyListState:
    return CIDRDenyListState(name, 1, cidrs)


WEB_RULES = [{"name": "no-telnet", "action": "Drop", "tcp": {"destinationPort": {"min": 23, "max": 23}}},
             {"name": "audit-dns", "action": "Count", "udp": {"destinationPort": {"min": 53, "max": 53}}}]
WEB = packet_filter("web", WEB_RULES)


def test_rules_go_to_the_idle_bank_then_one_switch() -> None:
    port = FakePrefilter()
    manager = PrefilterManager(port)
    manager.on_update(Kind.PACKET_FILTER, "web", WEB)
    assert manager.apply() == {"rules": 2, "prefixes": 0}
    assert port.log == ["bank1", "switch1"] and port.active.generation == 1
    assert [r.rule_ref for r in port.in_force()] == [manager.refs[("rule", "web.no-telnet")],
                                                     manager.refs[("rule", "web.audit-dns")]]
    port.log.clear()
    manager.on_update(Kind.PACKET_FILTER, "web", WEB)  # the same record again: nothing to write
    assert manager.apply() == {"rules": 0, "prefixes": 0} and port.log == []
    manager.on_update(Kind.PACKET_FILTER, "ops", packet_filter("ops", [], sanity="Count"))
    manager.apply()
    assert port.log == ["bank0", "switch0"] and port.active == ActiveSet(0, len(SANITY) + 2, 2)
    names = [row.name for row in manager.counters()]
    assert names[:2] == ["sanity.ip-df-and-mf", "sanity.ip-fragment-offset-one"] or "web.no-telnet" in names
    assert all(row.action == "count" for row in manager.counters() if row.name.startswith("sanity."))


def test_slots_are_stable_and_zeroed_for_new_owners() -> None:
    port = FakePrefilter(cidr_capacity=10_000)
    manager = PrefilterManager(port)
    manager.on_update(Kind.PACKET_FILTER, "web", WEB)
    manager.apply()
    telnet = manager.refs[("rule", "web.no-telnet")]
    port.counters[telnet] = RuleCounters(5, 500, 5, 500)
    manager.on_update(Kind.PACKET_FILTER, "a", packet_filter("a", [{"name": "x", "action": "Drop"}]))
    manager.apply()
    assert manager.refs[("rule", "web.no-telnet")] == telnet
    assert port.counters[telnet].packets == 5  # kept: still the same rule
    assert manager.owner_of(telnet) == ("rule", "web.no-telnet")
    manager.on_update(Kind.PACKET_FILTER, "web", None)
    manager.apply()
    assert ("rule", "web.no-telnet") not in manager.refs
    port.counters[telnet] = RuleCounters(9, 9, 9, 9)  # a stale count in a freed slot...
    for i in range(4095):  # ...is zeroed when the slot gets a new owner (freed slots are reused last)
        manager.on_update(Kind.CIDR_DENY_LIST, f"l{i}", deny(f"l{i}", f"10.{i // 256}.{i % 256}.0/24"))
    with pytest.raises(RuleCapacityError):
        manager.apply()  # 4095 slots for 4095 lists + 1 rule: refused, nothing written
    assert port.cidr == {}
    manager.on_update(Kind.CIDR_DENY_LIST, "l4094", None)
    manager.apply()  # every slot in use, the freed one last
    assert (manager.owner_of(telnet) or ("", ""))[0] == "denylist" and telnet not in port.counters
    assert len(port.cidr) == 4094


def test_deny_lists_by_difference() -> None:
    port = FakePrefilter()
    manager = PrefilterManager(port)
    manager.on_update(Kind.CIDR_DENY_LIST, "bad", deny("bad", "203.0.113.0/24", "198.51.100.0/24"))
    manager.set_file_list("/etc/deny.txt", frozenset({IPv4Network("192.0.2.0/24"), IPv4Network("203.0.113.0/24")}))
    assert manager.apply() == {"rules": 0, "prefixes": 3}
    bad, file = manager.refs[("denylist", "bad")], manager.refs[("file", "/etc/deny.txt")]
    assert port.cidr == {IPv4Network("203.0.113.0/24"): bad, IPv4Network("198.51.100.0/24"): bad,
                         IPv4Network("192.0.2.0/24"): file}
    port.log.clear()
    manager.on_update(Kind.CIDR_DENY_LIST, "bad", deny("bad", "203.0.113.0/24", "198.51.0.0/16"))
    assert manager.apply() == {"rules": 0, "prefixes": 2}
    assert port.log == ["cidr+1", "cidr-1"]  # one new prefix, then one stale one
    assert port.active.count == 0  # no rules: nothing written to the banks


def test_too_many_rules_or_prefixes_change_nothing() -> None:
    port = FakePrefilter(cidr_capacity=2)
    manager = PrefilterManager(port)
    manager.on_update(Kind.PACKET_FILTER, "web", WEB)
    manager.apply()
    before = (list(port.in_force()), port.active)
    many = [{"name": f"r{i}", "action": "Drop"} for i in range(MAX_RULES)]
    manager.on_update(Kind.PACKET_FILTER, "big", packet_filter("big", many))
    with pytest.raises(RuleCapacityError, match=f"would need {MAX_RULES + 2} rules"):
        manager.apply()
    assert (port.in_force(), port.active) == before
    manager.on_update(Kind.PACKET_FILTER, "big", None)
    manager.on_update(Kind.CIDR_DENY_LIST, "bad", deny("bad", "10.0.0.0/8", "11.0.0.0/8", "12.0.0.0/8"))
    with pytest.raises(MapCapacityError):
        manager.apply()
    assert port.cidr == {} and (port.in_force(), port.active) == before
    manager.on_update(Kind.CIDR_DENY_LIST, "bad", deny("bad", "10.0.0.0/8"))
    manager.apply()
    assert list(port.cidr) == [IPv4Network("10.0.0.0/8")]


def test_a_restarted_manager_adopts_the_kernel_state() -> None:
    port = FakePrefilter()
    first = PrefilterManager(port)
    first.on_update(Kind.PACKET_FILTER, "web", WEB)
    first.on_update(Kind.CIDR_DENY_LIST, "bad", deny("bad", "203.0.113.0/24"))
    first.apply()
    port.log.clear()
    second = PrefilterManager(port)  # the agent restarted: same pinned maps
    second.on_update(Kind.PACKET_FILTER, "web", WEB)
    second.on_update(Kind.CIDR_DENY_LIST, "bad", deny("bad", "203.0.113.0/24", "192.0.2.0/24"))
    assert second.apply() == {"rules": 0, "prefixes": 1}
    assert second.refs == first.refs and port.log == ["cidr+1"]
    assert second.status()["generation"] == 1


def test_resync_rewrites_drift() -> None:
    port = FakePrefilter()
    manager = PrefilterManager(port)
    manager.on_update(Kind.PACKET_FILTER, "web", WEB)
    manager.on_update(Kind.CIDR_DENY_LIST, "bad", deny("bad", "203.0.113.0/24"))
    manager.apply()
    port.banks[port.active.bank][0] = replace(port.banks[port.active.bank][0], dport_min=0)  # someone wrote the map
    port.cidr.clear()
    assert manager.resync() == {"repaired_prefilter_rules": 1, "repaired_prefilter_cidr": 1}
    assert port.in_force()[0].dport_min == 23 and list(port.cidr) == [IPv4Network("203.0.113.0/24")]


def test_a_record_the_model_refuses_leaves_that_filter_out() -> None:
    port = FakePrefilter()
    manager = PrefilterManager(port)
    manager.on_update(Kind.PACKET_FILTER, "web", WEB)
    manager.on_update(Kind.PACKET_FILTER, "bad", packet_filter("bad", [{"name": "x", "action": "Explode"}]))
    manager.apply()
    assert [r.rule_ref for r in port.in_force()] == [manager.refs[("rule", "web.no-telnet")],
                                                     manager.refs[("rule", "web.audit-dns")]]
    assert "bad" in manager.status()["not_enforced"]


def test_readers_see_what_is_in_force_through_the_query_interface() -> None:
    """membranectl prefilter list|stats and the metrics read PrefilterQueries: the deny lists, then
    the rules in the order a packet meets them, with counters from the datapath."""
    from membrane.agent.metrics import PrefilterCollector
    from membrane.agent.prefilter_api import prefilter_list, prefilter_stats

    port = FakePrefilter()
    manager = PrefilterManager(port)
    assert manager.prefilter_entries() == [] and prefilter_stats(manager) == []
    manager.on_update(Kind.PACKET_FILTER, "web.example", packet_filter("web.example", WEB_RULES))
    manager.on_update(Kind.CIDR_DENY_LIST, "bad", deny("bad", "203.0.113.0/24", "198.51.100.7/32"))
    manager.apply()
    port.counters[manager.refs[("rule", "web.example.no-telnet")]] = RuleCounters(3, 180, 3, 180)
    port.counters[manager.refs[("denylist", "bad")]] = RuleCounters(7, 420, 7, 420)
    rows = prefilter_list(manager)
    assert [(r["name"], r["kind"], r["action"], r["origin"]) for r in rows] == [
        ("bad", "deny-list", "drop", "bad"), ("web.example.no-telnet", "rule", "drop", "web.example"),
        ("web.example.audit-dns", "rule", "count", "web.example")]
    assert rows[0]["matches"] == "source in 2 prefix(es)" and rows[1]["matches"] == "tcp dport 23"
    stats = {r["name"]: r for r in prefilter_stats(manager)}
    assert stats["web.example.no-telnet"]["dropped_packets"] == 3 and stats["bad"]["bytes"] == 420
    assert stats["web.example.audit-dns"]["packets"] == 0
    families = {f.name: f for f in PrefilterCollector(manager).collect()}
    dropped = {s.labels["rule"]: s.value for s in families["membrane_prefilter_dropped_packets"].samples
               if s.name.endswith("_total")}
    assert dropped == {"bad": 7, "web.example.no-telnet": 3, "web.example.audit-dns": 0}
    manager.on_update(Kind.PACKET_FILTER, "web.example", None)
    manager.apply()
    assert [e.name for e in manager.prefilter_entries()] == ["bad"]


def test_a_prefilter_drop_flow_names_its_rule_never_a_policy() -> None:
    from membrane.agent.flow_directory import PolicyDirectory
    from membrane.agent.observing import Enricher
    from membrane.agent.observing.events import EventType, decode_event, encode_event

    port = FakePrefilter()
    manager = PrefilterManager(port)
    manager.on_update(Kind.PACKET_FILTER, "web", WEB)
    manager.on_update(Kind.CIDR_DENY_LIST, "bad", deny("bad", "203.0.113.0/24"))
    manager.apply()

    class Policies:  # a policy rule table that would answer any slot: the prefilter's must not ask it
        generation = 1

        def rule_policies(self, ref: int) -> list[str]:
            return ["default/some-policy"]

        def peer_pods(self) -> list[object]:
            return []

        def identity_labels(self, identity: int) -> None:
            return None

    enricher = Enricher("n1", PolicyDirectory(Policies(), manager.owner_of))  # type: ignore[arg-type]  # the methods flows use
    telnet, bad = manager.refs[("rule", "web.no-telnet")], manager.refs[("denylist", "bad")]
    for reason, ref, name in ((15, telnet, "prefilter/web.no-telnet"), (16, bad, "prefilter/bad")):
        flow = enricher.flow(decode_event(encode_event(type=EventType.DROP, saddr="203.0.113.9", daddr="10.0.0.5",
                                                       nexthdr=6, dport=23, verdict=1, reason=reason, rule_ref=ref)))
        assert flow.policies == (name,) and flow.drop_reason.startswith("DROP_PREFILTER"), flow
