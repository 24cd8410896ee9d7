"""NodePort flows name their Service: a connection from outside the node, translated per packet at
the node's device (bpf_host.c), shows up in `membranectl observe` with the Service and the
translation (frontend -> backend), and `bpf.lb` lists its NAT entries and the Maglev table.
The Service is applied to the standalone agent (its own load balancer), as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, Pod, tool
from membrane_testkit.lab.underlay import Underlay
from membrane_testkit.waiting import wait_for

from .test_flows import observe
from .test_services import PROBE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

NODE_IP, OUTSIDE = "192.0.2.41", "192.0.2.60"
NODE_PORT = 30081


def _objects() -> list[dict[str, Any]]:
    web = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web1", "namespace": "shop", "labels": {"app": "web"}},
           "spec": {"containers": [{"name": "c", "image": "i",
                                    "ports": [{"name": "web", "containerPort": 8080, "protocol": "TCP"}]}]}}
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.21", "selector": {"app": "web"},
                    "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web",
                               "nodePort": NODE_PORT}]}}
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}, web, svc]


@pytest.fixture
def lab(make_node: Any) -> Iterator[tuple[LabNode, Pod, str]]:
    tag = f"{os.getpid() % 10000}f"
    underlay = Underlay(f"mbt-ul{tag}").create()
    outside = f"mbt-out{tag}"
    servers: list[subprocess.Popen[str]] = []
    try:
        node = make_node("10.200.1.0/24", start=False,
                         extra_args=["--cluster-cidr", "10.200.0.0/16", "--devices", "ul0", "--node-ip", NODE_IP])
        underlay.attach(node.netns, NODE_IP)
        netns.create(outside)
        underlay.attach(outside, OUTSIDE)
        node.start_agent()
        node.api("apply", objects=_objects())
        web1 = node.add_pod("web1", "shop")
        proc = subprocess.Popen(["ip", "netns", "exec", web1.netns, sys.executable, "-S", "-u", PROBE, "serve",
                                 "web1", web1.ip, "8080", "5353", "peer"], stdout=subprocess.PIPE, text=True)
        servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield node, web1, outside
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        netns.delete(outside)
        underlay.destroy()


def test_nodeport_flow_names_the_service_and_translation(lab: tuple[LabNode, Pod, str]) -> None:
    node, web1, outside = lab

    def reached() -> bool:
        done = netns.run(["ip", "netns", "exec", outside, sys.executable, "-S", "-u", PROBE, "client",
                          json.dumps([{"op": "tcp", "ip": NODE_IP, "port": NODE_PORT, "timeout": 3}])], timeout=30)
        return all("reply" in r for r in json.loads(done.stdout))
    wait_for(reached, 30, 0.5, "the NodePort answers from outside")
    translation = f"{NODE_IP}:{NODE_PORT} -> {web1.ip}:8080"
    found: list[dict[str, Any]] = []

    def named() -> bool:
        found[:] = [f for f in observe(node, "--last", "1000") if f.get("service") == "shop/web"]
        return any(f["trace_event"] == "translation" for f in found) and any(
            f["trace_event"] != "translation" and f["source_ip"] == OUTSIDE for f in found)
    wait_for(named, 10, 0.3, "the NodePort translation and the pod's flow, both naming shop/web")
    # The device's translation event and the backend pod's own flow of the connection.
    assert all(f["translation"] == translation for f in found), found
    dump = node.api("bpf.lb")
    assert any(row["dir"] == "forward" and row["tuple"].startswith(OUTSIDE + ":")
               and row["to"].endswith(f"{web1.ip}:8080") for row in dump["nat"]), dump["nat"]
    assert dump["nat_total"] >= 2
    (ident,) = {row["id"] for row in dump["nat"]}
    table = next(t for t in dump["maglev"] if t["id"] == ident)
    assert table["size"] == 1021 and table["backends"].count("=") == 1, table
    # The table view lists them too, bounded (the total is said).
    table_view = subprocess.run([tool("membranectl"), "--socket", node.socket, "bpf", "lb"],
                                capture_output=True, text=True, timeout=30)
    assert table_view.returncode == 0, table_view.stderr
    assert "Maglev tables (1):" in table_view.stdout and f"{web1.ip}:8080" in table_view.stdout
    assert "shown):" in table_view.stdout and OUTSIDE in table_view.stdout, table_view.stdout
