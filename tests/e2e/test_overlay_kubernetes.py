"""Cross-node pods in Kubernetes mode (root): the API stand-in, a real operator, two lab nodes
whose agents follow its state stream, joined by a lab underlay carrying their Node objects'
InternalIPs. Identities come from the operator (one allocator for the cluster), node IPs from
the streamed nodes: no per-node objects to apply, unlike the standalone overlay test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from membrane_testkit.lab import netns
from membrane_testkit.lab.cluster import KubeLab
from membrane_testkit.lab.node import LabNode, Pod
from membrane_testkit.lab.underlay import Underlay
from membrane_testkit.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, eBPF)")

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 80)); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"ok"); c.close()
"""

CONNECT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], 80), timeout=1.0); print(s.recv(8).decode())
except OSError as e:
    print("fail", e)
"""


def connects(src: Pod, ip: str) -> bool:
    return netns.exec_in(src.netns, [sys.executable, "-c", CONNECT, ip], check=False).stdout.strip() == "ok"


def node_ip(lab: KubeLab, node: LabNode) -> str:
    (address,) = [a.address for a in lab.core.read_node(node.name).status.addresses if a.type == "InternalIP"]
    return str(address)


@pytest.fixture
def cluster() -> Iterator[tuple[KubeLab, Underlay, list[LabNode]]]:
    lab = KubeLab(cluster_cidr="10.212.0.0/16").start()
    underlay = Underlay(f"mbt-ulk{os.getpid() % 10000}").create()
    try:
        nodes = []
        for _ in range(2):
            node = lab.add_node(start=False)
            ip = node_ip(lab, node)  # the Node object's InternalIP becomes the node's underlay address
            underlay.attach(node.netns, ip)
            node.extra_args += ["--node-ip", ip]
            node.start_agent()
            nodes.append(node)
        yield lab, underlay, nodes
    finally:
        lab.close()
        underlay.destroy()


def test_cross_node_pods_with_operator_identities(cluster: tuple[KubeLab, Underlay, list[LabNode]]) -> None:
    lab, underlay, (n1, n2) = cluster
    lab.create_namespace("shop", team="a")
    web = lab.run_pod(n1, "shop", "web", app="web")
    db = lab.run_pod(n2, "shop", "db", app="db")
    server = subprocess.Popen(["ip", "netns", "exec", db.netns, sys.executable, "-c", SERVER, db.ip],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert wait_for(lambda: connects(web, db.ip)), (n1.log_tail(), n2.log_tail())
        web_id = next(r for r in n1.api("endpoint.list") if r["pod"] == "shop/web")["identity"]
        capture = underlay.capture_vxlan(n1.netns, seconds=4, count=10)
        assert connects(web, db.ip)
        packets = capture.stop()
        assert {p["vni"] for p in packets if p["inner_src"] == web.ip} == {web_id}

        policy: dict[str, Any] = {"metadata": {"name": "db-ingress"}, "spec": {
            "podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "other"}}}]}]}}
        lab.networking.create_namespaced_network_policy("shop", policy)
        assert wait_for(lambda: not connects(web, db.ip))  # judged on n2 with the VNI identity
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] = {"app": "web"}
        lab.networking.replace_namespaced_network_policy("db-ingress", "shop", policy)
        assert wait_for(lambda: connects(web, db.ip))
    finally:
        server.kill()
        server.wait()
