"""What people see of the prefilter: `membranectl prefilter list|stats` rows, one line per rule,
and the per-rule Prometheus counters, all through the read-only query interface."""

from __future__ import annotations

from ipaddress import IPv4Network

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from membrane.agent.metrics import PrefilterCollector
from membrane.agent.prefilter_api import prefilter_list, prefilter_stats
from membrane.agent.prefilter_queries import PrefilterCounters, PrefilterEntry
from membrane.prefilter_converting import spec_rules
from membrane.prefilter_describing import describe
from membrane.prefilter_rules import SANITY, Action, Rule

from .test_prefilter_objects import VALID


class FakeQueries:
    def __init__(self) -> None:
        rules = spec_rules("cve", VALID["spec"])
        self.entries = [PrefilterEntry("bad", "deny-list", "drop", "bad", prefixes=3)] + [
            PrefilterEntry(r.name, "rule", r.action.word, "cve", r) for r in rules]
        self.counters = {"bad": PrefilterCounters(5, 300, 5, 300),
                         "cve.syn-flood": PrefilterCounters(100, 6000, 40, 2400)}

    def prefilter_entries(self) -> list[PrefilterEntry]:
        return list(self.entries)

    def prefilter_counters(self) -> dict[str, PrefilterCounters]:
        return dict(self.counters)


def test_each_rule_in_one_line() -> None:
    rules = spec_rules("cve", VALID["spec"])
    assert describe(rules[0]) == ("udp src 198.51.0.0/16 dst 10.0.0.7/32 hlen 24-60 totlen 0-100 frame shorter "
                                  "!totlen<hlen ttl 1-3 !RF !DF MF fragoff 0 !frag-overflow sport 0-1023 dport 53 "
                                  "udp-len-mismatch l4+8 dead00ef/ffff00ff")
    assert describe(rules[1]) == "tcp !options dport 80-443 flags SYN/SYN,ACK doff 0-15 > 1000/s per source (burst 50)"
    assert describe(rules[4]) == "truncated"
    assert describe(Rule("a.b", Action.DROP)) == "any ipv4"
    assert describe(Rule("a.b", Action.DROP, source=IPv4Network("192.0.2.0/24"))) == "src 192.0.2.0/24"
    assert all(describe(rule) for rule in SANITY)


def test_list_and_stats_rows() -> None:
    queries = FakeQueries()
    rows = prefilter_list(queries)
    assert [r["name"] for r in rows] == ["bad", "cve.frag-of-death", "cve.syn-flood", "cve.audit-icmp",
                                         "cve.sctp-probe", "cve.runt"]
    assert rows[0] == {"order": 1, "name": "bad", "kind": "deny-list", "action": "drop", "origin": "bad",
                       "matches": "source in 3 prefix(es)"}
    assert rows[2]["action"] == "ratelimit" and rows[2]["matches"].startswith("tcp")
    stats = {r["name"]: r for r in prefilter_stats(queries)}
    assert stats["cve.syn-flood"] == {"name": "cve.syn-flood", "kind": "rule", "action": "ratelimit", "packets": 100,
                                      "bytes": 6000, "dropped_packets": 40, "dropped_bytes": 2400}
    assert stats["cve.runt"]["packets"] == 0  # nothing matched yet: shown at 0, not left out


def test_per_rule_counters_in_prometheus() -> None:
    registry = CollectorRegistry()
    registry.register(PrefilterCollector(FakeQueries()))
    samples = {(s.name, s.labels.get("rule", s.labels.get("kind"))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert samples[("membrane_prefilter_matched_packets_total", "cve.syn-flood")] == 100
    assert samples[("membrane_prefilter_matched_bytes_total", "cve.syn-flood")] == 6000
    assert samples[("membrane_prefilter_dropped_packets_total", "cve.syn-flood")] == 40
    assert samples[("membrane_prefilter_dropped_bytes_total", "bad")] == 300
    assert samples[("membrane_prefilter_dropped_packets_total", "cve.runt")] == 0
    assert samples[("membrane_prefilter_entries", "rule")] == 5
    assert samples[("membrane_prefilter_entries", "deny-list")] == 1
