"""Kubernetes mode, end to end (root): "applied" means "enforced" for Kubernetes users too.

The API stand-in, a real `membrane-operator` and two real agents. Agents ack a stream version
only once their datapath enforces it; the operator writes on each NetworkPolicy how many nodes
enforce its current spec (`membrane.io/enforced: "N/M"`) and the newest generation all of them
enforce (`membrane.io/enforced-generation`). Checked: both appear for a new policy; an edit
while one agent is down shows "1/2" and keeps the old generation; the agent's return brings
"2/2" and the new generation; once the annotation names the generation, probes at once see its
verdict; writing the annotations never makes a new state version (no loop)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from membrane_testkit.lab import netns
from membrane_testkit.lab.cluster import KubeLab
from membrane_testkit.lab.traffic import CONNECT, OK_SERVER
from membrane_testkit.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, eBPF)")

ENFORCED, GENERATION = "membrane.io/enforced", "membrane.io/enforced-generation"


def connect(src_netns: str, ip: str, port: int, timeout: float = 0.5) -> bool:
    return netns.exec_in(src_netns, [sys.executable, "-c", CONNECT, ip, str(port), str(timeout)]).stdout.strip() == "ok"


def db_policy(ports: list[int]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                  "ports": [{"port": p, "protocol": "TCP"} for p in ports]}]}}


def test_policy_shows_how_many_nodes_enforce_it(lab: KubeLab) -> None:
    lab.create_namespace("shop")
    node1, node2 = lab.add_node(), lab.add_node()
    pods = {name: lab.run_pod(node1, "shop", name, app=name) for name in ("web", "db")}
    server = netns.popen_in(pods["db"].netns, [sys.executable, "-c", OK_SERVER, pods["db"].ip],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        web, db_ip = pods["web"].netns, pods["db"].ip

        def annotations() -> dict[str, str]:
            obj = lab.networking.read_namespaced_network_policy("db", "shop")
            return dict(obj.metadata.annotations or {})

        # A new policy: enforced by both nodes, at generation 1.
        lab.networking.create_namespaced_network_policy("shop", db_policy([80]))
        assert wait_for(lambda: annotations() == {ENFORCED: "2/2", GENERATION: "1"}), annotations()
        assert connect(web, db_ip, 80) and not connect(web, db_ip, 81)

        # No loop: the annotation writes are no state change for the agents.
        version = lab.operator_metric("membrane_operator_state_version")
        time.sleep(1.0)
        assert lab.operator_metric("membrane_operator_state_version") == version

        # node2's agent is down: an edit reaches node1 only; the generation all enforce stays 1.
        node2.stop_agent()
        assert wait_for(lambda: annotations().get(ENFORCED) == "1/2"), annotations()
        lab.networking.patch_namespaced_network_policy("db", "shop", {"spec": db_policy([81])["spec"]})
        generation = lab.networking.read_namespaced_network_policy("db", "shop").metadata.generation
        assert generation == 2
        time.sleep(1.0)
        assert annotations() == {ENFORCED: "1/2", GENERATION: "1"}
        # node1 enforces generation 2 already: the stream version node1 acked is past it.
        assert wait_for(lambda: connect(web, db_ip, 81)) and not connect(web, db_ip, 80)

        # node2 is back: 2/2 at generation 2; from the moment the annotation says so, the
        # verdict is the new one (strict: no settle time, no retry).
        node2.start_agent()
        assert wait_for(lambda: annotations() == {ENFORCED: "2/2", GENERATION: "2"}), annotations()
        lab.networking.patch_namespaced_network_policy("db", "shop", {"spec": db_policy([80])["spec"]})
        assert wait_for(lambda: annotations().get(GENERATION) == "3", interval=0.005), annotations()
        assert connect(web, db_ip, 80) and not connect(web, db_ip, 81)
        log = lab.operator_log.read_text()
        assert "enforcement annotation" not in log and "writing enforcement annotations failed" not in log, log[-2000:]
    finally:
        server.kill()
        server.wait(5)
