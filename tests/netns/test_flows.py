"""Flows from real traffic and real drops, found through the gRPC Observer and membranectl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, tool
from membrane_testkit.waiting import wait_for


def observe(node: LabNode, *args: str) -> list[dict[str, object]]:
    done = subprocess.run([tool("membranectl"), "--socket", node.socket, "observe", "-o", "json", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def observed(node: LabNode, *args: str, timeout: float = 5.0) -> list[dict[str, object]]:
    """The flows matching `args` once at least one shows up (fails naming the filter if none does)."""
    found: list[dict[str, object]] = []

    def some() -> bool:
        found[:] = observe(node, "--last", "1000", *args)
        return bool(found)
    wait_for(some, timeout, 0.2, f"flows matching {' '.join(args)}")
    return found


def test_drops_and_connections_show_up_with_pods_and_reasons(node: LabNode) -> None:
    node.api("apply", objects=[
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
         "spec": {"containers": [{"name": "c", "image": "i"}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "namespace": "shop", "labels": {"app": "db"}},
         "spec": {"containers": [{"name": "c", "image": "i"}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db-closed",
         "namespace": "shop"}, "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": []}},
    ])
    web, db = node.add_pod("web", "shop"), node.add_pod("db", "shop")
    web.exec(["ping", "-c", "2", "-i", "0.2", "-W", "1", db.ip], check=False)  # denied by policy
    db.exec(["ping", "-c", "1", "-W", "1", web.ip])  # allowed: db's egress is open
    denied = observed(node, "--verdict", "DROPPED", "--to-pod", "shop/db")
    assert denied, observe(node, "--last", "50")
    flow = denied[-1]
    assert flow["drop_reason"] in ("POLICY_DENIED_INGRESS", "DROP_POLICY_INGRESS", "policy_denied_ingress") or \
        "POLICY" in str(flow["drop_reason"]).upper()
    assert flow["source"]["pod"] == "web" and flow["destination"]["namespace"] == "shop"
    assert flow["policies"] == ["shop/db-closed"]  # default deny: the policy that isolates db
    allowed = observed(node, "--verdict", "FORWARDED", "--from-pod", "shop/db")
    assert allowed and allowed[-1]["destination"]["pod"] == "web"
    # Filters narrow: web's egress was allowed, but no connection from web was forwarded.
    assert observe(node, "--last", "1000", "--verdict", "FORWARDED", "--from-pod", "shop/web",
                   "--type", "trace") == []
    assert observe(node, "--last", "1000", "--verdict", "FORWARDED", "--from-pod", "shop/web",
                   "--type", "policy-verdict", "--direction", "egress")
    compact = subprocess.run([tool("membranectl"), "--socket", node.socket, "observe", "--last", "5"],
                             capture_output=True, text=True)
    assert compact.returncode == 0 and "shop/web" in compact.stdout
    status = subprocess.run([tool("membranectl"), "--socket", node.socket, "observe", "--status"],
                            capture_output=True, text=True)
    assert status.returncode == 0 and "seen" in status.stdout.lower()
    metrics = netns.exec_in(node.netns, ["curl", "-sf", "http://127.0.0.1:9962/metrics"]).stdout
    assert "membrane_flows_processed_total" in metrics and "membrane_policy_verdicts_total" in metrics


def test_service_map_svg(node: LabNode, tmp_path) -> None:  # type: ignore[no-untyped-def]
    a, b = node.add_pod("a"), node.add_pod("b")
    a.exec(["ping", "-c", "1", "-W", "1", b.ip])
    observed(node, "--from-pod", "default/a")
    out = tmp_path / "map.svg"
    done = subprocess.run([tool("membranectl"), "--socket", node.socket, "observe", "--graph", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    svg = out.read_text()
    assert svg.startswith("<svg") or "<svg" in svg[:200]
    assert "default/a" in svg or ">a<" in svg



FLOOD = r"""
import socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
for i in range(count):
    s.sendto(b"x" * 16, (host, 1024 + i % 60000))  # every port a new flow: no aggregation helps
print(round(time.monotonic() - start, 3))
"""


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_flood_is_bounded_losses_counted_traffic_flows(node: LabNode) -> None:
    node.api("apply", objects=[
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "f"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "target", "namespace": "f",
         "labels": {"app": "target"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "closed",
         "namespace": "f"}, "spec": {"podSelector": {"matchLabels": {"app": "target"}}, "ingress": []}},
    ])
    flooder, target = node.add_pod("flooder", "f"), node.add_pod("target", "f")
    x, y = node.add_pod("x", "f"), node.add_pod("y", "f")
    scrape = ["curl", "-sf", "http://127.0.0.1:9962/metrics"]
    before = netns.exec_in(node.netns, scrape).stdout
    sent = 60000
    seconds = float(flooder.exec([sys.executable, "-c", FLOOD, target.ip, str(sent)], timeout=120).stdout)
    # Traffic between other pods still flows during and after the flood.
    x.exec(["ping", "-c", "3", "-i", "0.2", "-W", "1", y.ip])
    time.sleep(2.5)  # the observer folds kernel loss counters in every second
    after = netns.exec_in(node.netns, scrape).stdout
    dropped = metric(after, "membrane_datapath_packets_total", reason="drop_policy_ingress") - \
        metric(before, "membrane_datapath_packets_total", reason="drop_policy_ingress")
    assert dropped == sent, (dropped, sent)  # the counters saw every packet actually sent
    processed = metric(after, "membrane_flows_processed_total", type="drop") - \
        metric(before, "membrane_flows_processed_total", type="drop")
    lost = metric(after, "membrane_flow_events_lost_total", reason="rate_limited") - \
        metric(before, "membrane_flow_events_lost_total", reason="rate_limited")
    cpus = os.cpu_count() or 1
    bound = cpus * (2000 + 1000 * (seconds + 1))  # burst + rate per CPU over the flood
    assert processed <= bound, (processed, bound, seconds)
    assert lost > 0 and processed + lost >= sent * 0.9, (processed, lost, sent)
