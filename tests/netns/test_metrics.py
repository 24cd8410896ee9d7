"""A real agent's /metrics: every family the observability issue asks for, with its labels."""

from __future__ import annotations

import re

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode
from membrane_testkit.waiting import wait_for

# family (as exposed) -> labels each of its samples must carry
FAMILIES: dict[str, set[str]] = {
    "membrane_datapath_packets_total": {"verdict", "reason", "direction"},  # drops and forwards
    "membrane_datapath_bytes_total": {"verdict", "reason", "direction"},
    "membrane_policy_verdicts_total": {"direction", "verdict"},
    "membrane_flows_processed_total": {"type", "verdict"},
    "membrane_flow_events_lost_total": {"reason"},
    "membrane_endpoints": {"state"},
    "membrane_identities": set(),
    "membrane_policies": set(),
    "membrane_bpf_map_entries": {"map"},
    "membrane_bpf_map_pressure": {"map"},
    "membrane_bpf_map_operation_errors_total": {"map", "op"},
    "membrane_map_resync_repairs_total": {"map"},
    "membrane_cni_request_duration_seconds_bucket": {"command", "outcome", "le"},
    "membrane_policy_implementation_delay_seconds_bucket": {"cause", "le"},
    "membrane_agent_bootstrap_seconds": set(),
    "membrane_datapath_compile_seconds": set(),
    "membrane_datapath_load_seconds": set(),
    "membrane_gc_pause_seconds_bucket": {"generation", "le"},
    "membrane_gc_frozen_objects": set(),
}

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def test_every_issue_family_is_exported_with_its_labels(node: LabNode) -> None:
    node.api("apply", objects=[
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "m"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "m", "labels": {"app": "a"}},
         "spec": {"containers": [{"name": "c", "image": "i"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "namespace": "m", "labels": {"app": "b"}},
         "spec": {"containers": [{"name": "c", "image": "i"}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "b-closed",
         "namespace": "m"}, "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "ingress": []}},
    ])
    a, b = node.add_pod("a", "m"), node.add_pod("b", "m")
    a.exec(["ping", "-c", "1", "-W", "1", b.ip], check=False)  # denied: a drop and a policy verdict
    b.exec(["ping", "-c", "1", "-W", "1", a.ip])  # allowed: forwards
    found: list[tuple[str, dict[str, str], float]] = []

    def counted() -> bool:  # the agent folds kernel counters and events into /metrics on its own pace
        found[:] = samples(netns.exec_in(node.netns, ["curl", "-sf", "http://127.0.0.1:9962/metrics"]).stdout)
        return any(n == "membrane_policy_verdicts_total" and lab.get("verdict") == "dropped" and v >= 1
                   for n, lab, v in found) and \
            sum(v for n, lab, v in found if n == "membrane_datapath_packets_total"
                and lab.get("verdict") == "forwarded") >= 2
    wait_for(counted, 10, 0.2, "the drop and the forwards in /metrics")
    missing, unlabelled = [], {}
    for family, labels in FAMILIES.items():
        rows = [lab for name, lab, _ in found if name == family]
        if not rows:
            missing.append(family)
        bad = [lab for lab in rows if set(lab) != labels]
        if bad:
            unlabelled[family] = bad[:2]
    assert not missing, f"families absent from /metrics: {missing}"
    assert not unlabelled, f"unexpected label sets: {unlabelled}"

    value = lambda name, **want: sum(v for n, lab, v in found  # noqa: E731
                                     if n == name and all(lab.get(k) == w for k, w in want.items()))
    assert value("membrane_datapath_packets_total", verdict="dropped", reason="drop_policy_ingress") >= 1
    assert value("membrane_datapath_packets_total", verdict="forwarded") >= 2
    assert value("membrane_policy_verdicts_total", direction="ingress", verdict="dropped") >= 1
    assert value("membrane_endpoints", state="ready") == 2
    assert value("membrane_policies") == 1 and value("membrane_identities") >= 2
    assert value("membrane_cni_request_duration_seconds_count", command="ADD", outcome="success") == 2
    # every keyed map reports its size; pods and policy are in them
    maps = {lab["map"]: v for n, lab, v in found if n == "membrane_bpf_map_entries"}
    assert set(maps) >= {"endpoints", "conntrack", "ipcache", "policy"}, maps
    assert maps["endpoints"] >= 2 and maps["ipcache"] >= 2 and maps["policy"] >= 1 and maps["conntrack"] >= 1
    assert all(0 <= v < 1 for n, _, v in found if n == "membrane_bpf_map_pressure")
    assert value("membrane_bpf_map_operation_errors_total") == 0
    assert value("membrane_agent_bootstrap_seconds") > 0 and value("membrane_datapath_compile_seconds") > 0
    # the start-up state frozen once ready (agent/heap_freezing.py); collections timed per generation
    assert value("membrane_gc_frozen_objects") > 10_000
    assert {lab["generation"] for n, lab, _ in found if n == "membrane_gc_pause_seconds_count"} == {"0", "1", "2"}
    assert value("membrane_gc_pause_seconds_count", generation="0") >= 1  # on again after the start
    # what every exporter has: the process and the build
    assert value("membrane_build_info", component="agent") == 1
    assert value("process_start_time_seconds") > 0 and value("process_resident_memory_bytes") > 0
