"""The chart's monitoring objects: PrometheusRule alerts checked and unit-tested with promtool
(Debian's `prometheus` package), Grafana dashboards as sidecar ConfigMaps, and the operator's
ServiceMonitor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from membrane_testkit import chart

ROOT = Path(__file__).resolve().parents[2]
ALERTS = {"MembraneUnexpectedDrops", "MembranePolicyDropsHigh", "MembraneBPFMapPressure", "MembraneBPFMapFull",
          "MembranePolicyChangeRefused", "MembranePrefilterDropping", "MembranePrefilterObjectRefused",
          "MembranePolicyPropagationSlow", "MembraneOperatorNoLeader"}


@pytest.fixture(scope="module")
def helm() -> str:
    try:
        return chart.helm_binary()
    except chart.HelmUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def monitored(helm: str) -> list[dict[str, Any]]:
    return chart.render(helm, {"prometheus.prometheusRule.enabled": True, "prometheus.serviceMonitor.enabled": True,
                               "dashboards.enabled": True, "dashboards.annotations.grafana_folder": "Networking"})


def _promtool() -> str:
    beside = Path(sys.executable).parent / "promtool"  # scripts/install.sh puts it in the venv
    found = str(beside) if beside.exists() else shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: scripts/install.sh installs Debian's prometheus package")
    return found


def _rules_file(docs: list[dict[str, Any]], tmp_path: Path) -> Path:
    rule = chart.one(docs, "PrometheusRule", "membrane")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path


def test_rules_pass_promtool_check(monitored: list[dict[str, Any]], tmp_path: Path) -> None:
    path = _rules_file(monitored, tmp_path)
    proc = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {r["alert"] for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]}
    assert names == ALERTS


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def test_alerts_fire_on_the_conditions_they_name(monitored: list[dict[str, Any]], tmp_path: Path) -> None:
    """promtool's rule unit tests: synthetic series, expected alerts at given times."""
    path = _rules_file(monitored, tmp_path)
    pkts = "membrane_datapath_packets_total"
    bucket = "membrane_operator_state_propagation_seconds_bucket"
    tests = {"rule_files": [str(path)], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": [
            # 10/s spoofed drops on n1: unexpected; 10/s policy drops on n2: expected, below 100/s.
            _series(pkts, {"instance": "n1", "verdict": "dropped", "reason": "drop_spoofed_ip",
                           "direction": "ingress"}, "0+600x40"),
            _series(pkts, {"instance": "n2", "verdict": "dropped", "reason": "drop_policy_ingress",
                           "direction": "ingress"}, "0+600x40"),
            # 500/s policy drops on n3 for 40 minutes.
            _series(pkts, {"instance": "n3", "verdict": "dropped", "reason": "drop_policy_egress",
                           "direction": "egress"}, "0+30000x40"),
            _series(pkts, {"instance": "n1", "verdict": "forwarded", "reason": "forwarded",
                           "direction": "egress"}, "0+60000x40"),
            # The prefilter drops 2000/s by one rule on n2 (its drops are no unexpected drop):
            # above the 1000/s threshold; another rule 10/s, below it.
            _series(pkts, {"instance": "n2", "verdict": "dropped", "reason": "drop_prefilter_rule",
                           "direction": "ingress"}, "0+120000x40"),
            _series("membrane_prefilter_dropped_packets_total", {"instance": "n2", "rule": "cve.frag",
                                                                 "kind": "rule", "action": "drop"}, "0+120000x40"),
            _series("membrane_prefilter_dropped_packets_total", {"instance": "n2", "rule": "bad",
                                                                 "kind": "deny-list", "action": "drop"}, "0+600x40"),
            _series("membrane_bpf_map_pressure", {"instance": "n1", "map": "conntrack"}, "0.5x5 0.95x35"),
            _series("membrane_bpf_map_pressure", {"instance": "n2", "map": "policy"}, "0.99x40"),
            # Propagation: every change takes 2.5-5 s (all observations in the 5 s bucket).
            _series(bucket, {"le": "0.5"}, "0x40"), _series(bucket, {"le": "1"}, "0x40"),
            _series(bucket, {"le": "5"}, "0+10x40"), _series(bucket, {"le": "+Inf"}, "0+10x40"),
            # One PacketFilter refused from minute 10 on (both replicas report it).
            _series("membrane_operator_invalid_prefilter_objects", {"pod": "op-a", "kind": "PacketFilter"},
                    "0x10 1x30"),
            _series("membrane_operator_invalid_prefilter_objects", {"pod": "op-b", "kind": "PacketFilter"},
                    "0x10 1x30"),
            _series("membrane_operator_invalid_prefilter_objects", {"pod": "op-a", "kind": "CIDRDenyList"}, "0x40"),
            _series("membrane_operator_is_leader", {"pod": "op-a"}, "1x10 0x30"),
            _series("membrane_operator_is_leader", {"pod": "op-b"}, "0x40"),
        ], "alert_rule_test": [
            {"eval_time": "30m", "alertname": "MembraneUnexpectedDrops", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "instance": "n1", "reason": "drop_spoofed_ip"},
                 "exp_annotations": {
                     "summary": "membrane drops packets on n1 (drop_spoofed_ip)",
                     "description": "10 packets/s dropped for drop_spoofed_ip over 10 minutes: not NetworkPolicy. "
                                    "See `membranectl observe --verdict dropped` on that node."}}]},
            {"eval_time": "5m", "alertname": "MembraneUnexpectedDrops", "exp_alerts": []},  # not for 10m yet
            {"eval_time": "30m", "alertname": "MembranePrefilterDropping", "exp_alerts": [
                {"exp_labels": {"severity": "info", "instance": "n2", "rule": "cve.frag"},
                 "exp_annotations": {
                     "summary": "The XDP prefilter drops 2k packets/s on n2 (cve.frag)",
                     "description": "For 5 minutes. `membranectl prefilter stats` on that node shows every rule's "
                                    "counters; a Count rule with the same match audits without dropping."}}]},
            {"eval_time": "3m", "alertname": "MembranePrefilterDropping", "exp_alerts": []},  # not for 5m yet
            {"eval_time": "30m", "alertname": "MembranePolicyDropsHigh", "exp_alerts": [
                {"exp_labels": {"severity": "info", "instance": "n3"},
                 "exp_annotations": {"summary": "Many NetworkPolicy drops on n3",
                                     "description": "500 packets/s denied by NetworkPolicy for 15 minutes: a "
                                                    "missing allow rule, or a client retrying."}}]},
            {"eval_time": "30m", "alertname": "MembraneBPFMapPressure", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "instance": "n1", "map": "conntrack"},
                 "exp_annotations": {"summary": "BPF map conntrack on n1 is 95% full",
                                     "description": "New entries fail once it is full (new connections or pods "
                                                    "are then dropped)."}},
                {"exp_labels": {"severity": "warning", "instance": "n2", "map": "policy"},
                 "exp_annotations": {"summary": "BPF map policy on n2 is 99% full",
                                     "description": "New entries fail once it is full (new connections or pods "
                                                    "are then dropped)."}}]},
            {"eval_time": "30m", "alertname": "MembraneBPFMapFull", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "instance": "n2", "map": "policy"},
                 "exp_annotations": {"summary": "BPF map policy on n2 is full",
                                     "description": "99% of its capacity is used."}}]},
            {"eval_time": "30m", "alertname": "MembranePolicyPropagationSlow", "exp_alerts": [
                {"exp_labels": {"severity": "warning"},
                 "exp_annotations": {"summary": "Cluster changes take 4.96s to reach every agent (p99)",
                                     "description": "From a change seen on the API to its ack by every subscribed "
                                                    "agent, 99th percentile over 10 minutes."}}]},
            {"eval_time": "12m", "alertname": "MembranePrefilterObjectRefused", "exp_alerts": []},  # not 5m yet
            {"eval_time": "30m", "alertname": "MembranePrefilterObjectRefused", "exp_alerts": [
                {"exp_labels": {"severity": "warning", "kind": "PacketFilter"},
                 "exp_annotations": {
                     "summary": "1 PacketFilter object(s) refused by membrane-operator: enforced on no node",
                     "description": "`kubectl get packetfilters` shows Accepted False; the condition's message "
                                    "names the field and the reason."}}]},
            {"eval_time": "8m", "alertname": "MembraneOperatorNoLeader", "exp_alerts": []},
            {"eval_time": "30m", "alertname": "MembraneOperatorNoLeader", "exp_alerts": [
                {"exp_labels": {"severity": "critical"},
                 "exp_annotations": {"summary": "No membrane-operator replica holds the lease",
                                     "description": "No PodCIDRs or identities are assigned meanwhile: new pods wait."}}]},
        ]}]}
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = subprocess.run([_promtool(), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_is_opt_in_and_thresholds_come_from_values(helm: str) -> None:
    assert not chart.find(chart.render(helm), "PrometheusRule")
    docs = chart.render(helm, {"prometheus.prometheusRule.enabled": True, "prometheus.prometheusRule.mapPressure": 0.8,
                               "prometheus.prometheusRule.labels.release": "kps"})
    rule = chart.one(docs, "PrometheusRule", "membrane")
    assert rule["metadata"]["labels"]["release"] == "kps"
    exprs = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert exprs["MembraneBPFMapPressure"].endswith("> 0.8")


def test_dashboards_as_sidecar_configmaps(monitored: list[dict[str, Any]]) -> None:
    sources = {p.name: p.read_text() for p in (ROOT / "deploy" / "grafana").glob("*.json")}
    shipped = {p.name: p.read_text() for p in (chart.CHART / "files" / "dashboards").glob("*.json")}
    assert sources and shipped == sources, "copy deploy/grafana/*.json into deploy/helm/membrane/files/dashboards/"
    maps = [d for d in chart.find(monitored, "ConfigMap") if "dashboard" in d["metadata"]["name"]]
    assert len(maps) == len(sources)
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Networking"}
        ((name, text),) = cm["data"].items()
        assert json.loads(text) == json.loads(sources[name])
        assert len(text.encode()) < 1_000_000  # a ConfigMap holds at most 1 MiB


def test_operator_service_monitor(monitored: list[dict[str, Any]]) -> None:
    monitor = chart.one(monitored, "ServiceMonitor", "membrane-operator")
    service = chart.one(monitored, "Service", "membrane-operator")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [chart.NAMESPACE]
