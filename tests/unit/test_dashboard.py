"""The Grafana dashboard only queries metrics the agent really exports.

Exported names are read from the live collectors (AgentMetrics with its datapath collector and
state gauges, the flow observer's collector), fed with fakes, so renaming a metric in code
without fixing the dashboard (or the reverse) fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from membrane.agent.metrics import AgentMetrics, DatapathCollector
from membrane.agent.observing import FlowMetricsCollector, FlowObserver
from membrane.agent.prefilter_queries import PrefilterCounters, PrefilterEntry

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "membrane-agent.json"

_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count"),
             "gaugehistogram": ("_bucket", "_gsum", "_gcount"), "info": ("_info",)}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
                "bool", "inf", "nan"}


def agent_registry() -> CollectorRegistry:
    metrics = AgentMetrics()
    metrics.add_datapath(DatapathCollector(lambda: [("forwarded", "egress", 1, 100)], lambda: {"ready": 1},
                                           lambda: {"endpoints": (1, 4096)}))
    if hasattr(metrics, "watch_state"):  # identities / policies gauges (policy wiring)
        metrics.watch_state(lambda: 0, lambda: 0, dict)
    metrics.registry.register(FlowMetricsCollector(FlowObserver("node1")))
    metrics.add_prefilter(_NoPrefilter())
    return metrics.registry


class _NoPrefilter:
    """A prefilter with nothing in force: the families are exported all the same."""

    def prefilter_entries(self) -> list[PrefilterEntry]:
        return []

    def prefilter_counters(self) -> dict[str, PrefilterCounters]:
        return {}


def exported_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (functions, keywords, labels and strings left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?", "", expr)  # numbers (1e-9 is no metric "e")
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        if expr[m.end():].lstrip().startswith("(") or word.lower() in PROMQL_WORDS or word.startswith("$"):
            continue  # a function call, keyword or template variable
        if expr[:m.start()].endswith("$"):
            continue
        names.add(word)
    return names


def queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    def walk(panels: list[dict]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel.get("title", "?"), target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard["panels"])
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if var.get("type") == "query" and text:
            inner = re.fullmatch(r"label_values\((\w+)\s*,\s*\w+\)", text)
            yield f"variable {var['name']}", inner.group(1) if inner else text


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_every_panel_uses_only_exported_metrics(dashboard: dict) -> None:
    exported = exported_names(agent_registry())
    unknown = {}
    seen = set()
    for title, expr in queries(dashboard):
        used = metric_names(expr)
        assert used, f"panel {title!r}: no metric in {expr!r}"
        seen |= used
        if used - exported:
            unknown[title] = sorted(used - exported)
    assert not unknown, f"panels query metrics the agent does not export: {unknown}"
    # the metrics are on the dashboard
    for name in ("membrane_datapath_packets_total", "membrane_flows_processed_total",
                 "membrane_flow_events_lost_total", "membrane_policy_verdicts_total",
                 "membrane_prefilter_dropped_packets_total", "membrane_prefilter_matched_packets_total",
                 "membrane_prefilter_dropped_bytes_total", "membrane_prefilter_entries"):
        assert name in seen


def test_the_check_catches_unknown_names() -> None:
    exported = exported_names(agent_registry())
    assert metric_names('sum by (reason) (rate(membrane_no_such_thing_total{instance=~"$instance"}[5m]))') == \
        {"membrane_no_such_thing_total"}
    assert "membrane_no_such_thing_total" not in exported
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(membrane_cni_request_duration_seconds_bucket"
                        "[$__rate_interval])))") <= exported


def test_dashboard_shape(dashboard: dict) -> None:
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "membrane-agent"


def test_drop_reasons_come_from_the_data(dashboard: dict) -> None:
    """No panel lists drop reasons: a reason a newer datapath adds (drop_tunnel_key, drop_no_route)
    must show up without editing the dashboard. Prefix patterns (drop_policy_.*) are fine."""
    for title, expr in queries(dashboard):
        for m in re.finditer(r'reason\s*(=~|!~|=|!=)\s*"([^"]*)"', expr):
            op, value = m.groups()
            assert "|" not in value, f"panel {title!r} hard-codes a reason list: {value!r}"
            assert op in ("=~", "!~") and (value.startswith("$") or value.endswith(".*")), \
                f"panel {title!r} pins one reason: {m.group(0)!r}"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "label_values(membrane_datapath_packets_total, reason)" in json.dumps(variables["drop_reason"]["query"])
