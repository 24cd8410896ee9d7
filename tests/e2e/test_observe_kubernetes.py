"""`membranectl observe` against an agent in Kubernetes mode (root): pods, namespaces,
identities and the deciding policy come from the operator's state stream, not from a local
store, and the observer answers exactly as in standalone mode."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from membrane_testkit.lab.cluster import KubeLab
from membrane_testkit.lab.node import LabNode, tool
from membrane_testkit.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, eBPF)")


def observe(node: LabNode, *args: str) -> list[dict[str, object]]:
    done = subprocess.run([tool("membranectl"), "--socket", node.socket, "observe", "-o", "json", "--last", "1000",
                           *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def wait_flows(node: LabNode, *args: str, timeout: float = 10.0) -> list[dict[str, object]]:
    found: list[dict[str, object]] = []

    def some() -> bool:
        found[:] = observe(node, *args)
        return bool(found)
    wait_for(some, timeout, 0.2, f"flows matching {' '.join(args)}")
    return found


def test_observe_in_kubernetes_mode(lab: KubeLab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lab.create_namespace("shop", team="a")
    node = lab.add_node()
    lab.networking.create_namespaced_network_policy("shop", {
        "metadata": {"name": "db-closed"},
        "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"], "ingress": []}})
    web, db = lab.run_pod(node, "shop", "web", app="web"), lab.run_pod(node, "shop", "db", app="db")
    # The identities and the policy reach the maps through the operator's stream: wait for the deny.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        web.exec(["ping", "-c", "1", "-W", "1", db.ip], check=False)
        if observe(node, "--verdict", "DROPPED", "--to-pod", "shop/db", "--from-pod", "shop/web"):
            break
    db.exec(["ping", "-c", "1", "-W", "1", web.ip])

    denied = wait_flows(node, "--verdict", "DROPPED", "--to-pod", "shop/db")
    assert denied, observe(node)
    flow = denied[-1]
    assert flow["source"]["pod"] == "web" and flow["source"]["namespace"] == "shop"
    assert flow["destination"]["pod"] == "db" and flow["policies"] == ["shop/db-closed"]
    assert int(flow["source"]["identity"]) >= 256 and flow["node"] == node.name
    assert "app=web" in " ".join(map(str, flow["source"]["labels"])) or \
        flow["source"]["labels"].get("app") == "web"  # type: ignore[union-attr]
    allowed = wait_flows(node, "--verdict", "FORWARDED", "--from-pod", "shop/db")
    assert allowed and allowed[-1]["destination"]["pod"] == "web"
    # label selectors work on the stream's labels
    assert observe(node, "--from-label", "app=web", "--verdict", "DROPPED")
    compact = subprocess.run([tool("membranectl"), "--socket", node.socket, "observe", "--last", "5"],
                             capture_output=True, text=True, timeout=30)
    assert compact.returncode == 0 and "shop/db" in compact.stdout, compact.stderr
    graph = tmp_path / "map.svg"
    done = subprocess.run([tool("membranectl"), "--socket", node.socket, "observe", "--graph", str(graph)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and 'data-id="shop/db"' in graph.read_text(), done.stderr
