"""Pods on two nodes talk over the VXLAN overlay, real packets.

Two lab nodes (namespaces with a real agent each) joined by a lab underlay (a bridge in its own
namespace). Standalone mode: both nodes get the same Namespace and Pod objects in the same order,
so their locally allocated identities agree, and each learns the other's pod with its IP and
`status.hostIP` (its node's underlay address), which makes the pod's ipcache entry name that
node as tunnel endpoint. VXLAN packets are captured on the underlay bridge: their VNI is the
source pod's identity, and the receiving node's NetworkPolicy judges that identity.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from membrane_testkit.lab import forging, netns
from membrane_testkit.lab.node import LabNode, Pod
from membrane_testkit.lab.probes import counters
from membrane_testkit.lab.underlay import Underlay
from membrane_testkit.waiting import wait_for

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 80)); s.listen(64)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"ok" + b"x" * int(sys.argv[2])); c.close()
"""

CONNECT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], 80), timeout=float(sys.argv[2])); data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    print("ok" if data.startswith(b"ok") else "short", len(data))
except OSError as e:
    print("fail", e)
"""

BIG = 200_000  # bytes the server answers with: many full-MTU segments through the tunnel


@dataclass
class TwoNodes:
    underlay: Underlay
    n1: LabNode
    n2: LabNode
    web: Pod  # on n1
    db: Pod  # on n2
    ip1: str
    ip2: str


def ns_obj(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": "a"}}}


def pod_obj(name: str, node: LabNode, node_ip: str, pod_ip: str | None = None, **labels: str) -> dict[str, Any]:
    status: dict[str, Any] = {"hostIP": node_ip}
    if pod_ip:
        status.update(podIP=pod_ip, podIPs=[{"ip": pod_ip}])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"nodeName": node.name, "containers": [{"name": "c", "image": "i"}]}, "status": status}


def db_policy(from_app: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db-ingress", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from_app}}}]}]}}


def connect(src: Pod, ip: str, timeout: float = 2.0) -> str:
    return netns.exec_in(src.netns, [sys.executable, "-c", CONNECT, ip, str(timeout)], check=False).stdout.strip()


def ping(src: Pod, ip: str, count: int = 3) -> bool:
    done = netns.exec_in(src.netns, ["ping", "-c", str(count), "-i", "0.2", "-W", "1", ip], check=False)
    return done.returncode == 0


def endpoint_identity(node: LabNode, pod: str) -> int:
    (row,) = [r for r in node.api("endpoint.list") if r["pod"] == f"shop/{pod}"]
    return int(row["identity"])


@pytest.fixture
def two_nodes(make_node: Any) -> Iterator[TwoNodes]:
    underlay = Underlay(f"mbt-ul{os.getpid() % 10000}").create()
    server: subprocess.Popen[str] | None = None
    try:
        ip1, ip2 = "192.0.2.11", "192.0.2.12"
        common = ["--cluster-cidr", "10.200.0.0/16"]
        n1 = make_node("10.200.1.0/24", start=False, extra_args=[*common, "--node-ip", ip1])
        n2 = make_node("10.200.2.0/24", start=False, extra_args=[*common, "--node-ip", ip2])
        underlay.attach(n1.netns, ip1)
        underlay.attach(n2.netns, ip2)
        n1.start_agent()
        n2.start_agent()
        # Same objects, same order, on both nodes: the standalone allocators see the same labels.
        for node in (n1, n2):
            node.api("apply", objects=[ns_obj("shop"), pod_obj("web", n1, ip1, app="web"),
                                       pod_obj("db", n2, ip2, app="db")])
        web, db = n1.add_pod("web", "shop"), n2.add_pod("db", "shop")
        n1.api("apply", objects=[pod_obj("db", n2, ip2, db.ip, app="db")])
        n2.api("apply", objects=[pod_obj("web", n1, ip1, web.ip, app="web")])
        server = subprocess.Popen(["ip", "netns", "exec", db.netns, sys.executable, "-c", SERVER, db.ip, str(BIG)],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield TwoNodes(underlay, n1, n2, web, db, ip1, ip2)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        underlay.destroy()  # the nodes (make_node) are destroyed after this fixture


def test_the_agent_creates_the_vxlan_device_and_derives_the_pod_mtu(two_nodes: TwoNodes) -> None:
    status = two_nodes.n1.api("status")["overlay"]
    assert status["mode"] == "vxlan" and status["node_ip"] == two_nodes.ip1
    assert (status["underlay_mtu"], status["pod_mtu"]) == (1500, 1450)
    link = netns.exec_in(two_nodes.n1.netns, ["ip", "-d", "link", "show", status["device"]]).stdout
    assert "vxlan external" in link or "external" in link, link
    assert "dstport 8472" in link and "mtu 1450" in link and "nolearning" in link, link
    pod_link = two_nodes.web.exec(["ip", "link", "show", "eth0"]).stdout
    assert "mtu 1450" in pod_link


def test_identities_agree_across_nodes(two_nodes: TwoNodes) -> None:
    """Standalone allocation is per node: equal only because both saw the same objects in order."""
    def by_labels(node: LabNode) -> dict[tuple[str, ...], int]:
        return {tuple(sorted(i["labels"])): i["identity"] for i in node.api("identity.list")}

    assert by_labels(two_nodes.n1) == by_labels(two_nodes.n2)


def test_ping_and_tcp_across_nodes_carry_the_source_identity_as_vni(two_nodes: TwoNodes) -> None:
    t = two_nodes
    web_id, db_id = endpoint_identity(t.n1, "web"), endpoint_identity(t.n2, "db")
    capture = t.underlay.capture_vxlan(t.n1.netns, seconds=8, count=40)
    assert ping(t.web, t.db.ip)
    result = connect(t.web, t.db.ip)
    assert result == f"ok {BIG + 2}", result  # full-size segments fit: pod MTU leaves room for VXLAN
    packets = capture.stop()
    forward = [p for p in packets if p["inner_src"] == t.web.ip and p["inner_dst"] == t.db.ip]
    replies = [p for p in packets if p["inner_src"] == t.db.ip and p["inner_dst"] == t.web.ip]
    assert forward and replies, packets
    assert {(p["outer_src"], p["outer_dst"], p["vni"]) for p in forward} == {(t.ip1, t.ip2, web_id)}
    assert {(p["outer_src"], p["outer_dst"], p["vni"]) for p in replies} == {(t.ip2, t.ip1, db_id)}
    assert all(p["vni_flag"] for p in packets)
    assert {p["proto"] for p in forward} >= {1, 6}  # ICMP and TCP
    # Each node keeps its own conntrack entry of the flows.
    for node in (t.n1, t.n2):
        flows = [f for f in node.api("bpf.ct") if f["src"].startswith(t.web.ip + ":")]
        assert any(f["proto"] == "tcp" for f in flows), (node.name, flows)


def test_receiving_node_policy_judges_the_vni_identity(two_nodes: TwoNodes) -> None:
    t = two_nodes
    assert connect(t.web, t.db.ip).startswith("ok")
    t.n2.api("apply", objects=[db_policy("other")])  # db admits only app=other: web is denied
    before = counters(t.n2).get(("drop_policy_ingress", "ingress"), 0)
    assert connect(t.web, t.db.ip, timeout=1.0).startswith("fail")
    assert not ping(t.web, t.db.ip, count=1)
    assert counters(t.n2).get(("drop_policy_ingress", "ingress"), 0) > before  # dropped on n2, on arrival
    t.n2.api("apply", objects=[db_policy("web")])  # now web's identity is admitted
    assert connect(t.web, t.db.ip).startswith("ok")
    assert ping(t.web, t.db.ip, count=1)


def test_replies_pass_the_senders_isolation(two_nodes: TwoNodes) -> None:
    """web isolated for ingress on n1 (nothing admitted): its own connections still get answers."""
    t = two_nodes
    isolate = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "web-closed", "namespace": "shop"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"], "ingress": []}}
    t.n1.api("apply", objects=[isolate])
    assert connect(t.web, t.db.ip).startswith("ok")
    assert ping(t.web, t.db.ip, count=1)
    assert counters(t.n1).get(("drop_policy_ingress", "ingress"), 0) == 0


def node_obj(name: str, ip: str, pod_cidr: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": pod_cidr}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def test_standalone_node_objects_give_the_overlay_its_owners(two_nodes: TwoNodes) -> None:
    """Standalone mode learns nodes' pod CIDRs from Node objects: an address of n2's pod CIDR that
    no Pod object names yet is n2's to speak for; n1's own pod CIDR never is. A pod, unprivileged,
    cannot send to a tunnel port. (tests/e2e/test_overlay_trust_kubernetes.py: Kubernetes mode.)"""
    t = two_nodes
    db_id = endpoint_identity(t.n2, "db")
    sink = forging.UdpSink(t.web.netns, t.web.ip, 9000).start()
    try:
        def forged(inner_src: str, tag: str) -> None:
            forging.send(t.n2.netns, forging.vxlan(db_id, inner_src, t.web.ip, tag, 9000), t.ip1)

        before = counters(t.n1).get(("drop_tunnel_source_not_owned", "ingress"), 0)
        forged("10.200.2.77", "before-nodes")  # n2's pod CIDR, but n1 does not know it yet
        assert wait_for(lambda: counters(t.n1).get(("drop_tunnel_source_not_owned", "ingress"), 0) == before + 3)
        for node in (t.n1, t.n2):
            node.api("apply", objects=[node_obj(t.n1.name, t.ip1, "10.200.1.0/24"),
                                       node_obj(t.n2.name, t.ip2, "10.200.2.0/24")])
        forged("10.200.2.77", "pod-cidr-owned")
        assert wait_for(lambda: sink.got("pod-cidr-owned")), sink.lines
        before = counters(t.n1).get(("drop_tunnel_source_not_owned", "ingress"), 0)
        forged("10.200.1.99", "n1-cidr")  # n1's own pod CIDR: n2 may not speak for it
        assert wait_for(lambda: counters(t.n1).get(("drop_tunnel_source_not_owned", "ingress"), 0) == before + 3)

        before = counters(t.n2).get(("drop_pod_to_tunnel_port", "egress"), 0)
        out = forging.send(t.db.netns, forging.vxlan(db_id, t.db.ip, t.web.ip, "from-pod", 9000), t.ip1,
                           unprivileged=True)
        assert out.endswith("uid 65534"), out
        assert counters(t.n2).get(("drop_pod_to_tunnel_port", "egress"), 0) == before + 3
        time.sleep(0.3)  # observation window: any forged packet let through would reach the sink by now
        assert not [line for line in sink.lines if "before-nodes" in line or "n1-cidr" in line or "from-pod" in line]
        assert connect(t.web, t.db.ip).startswith("ok")  # the real traffic still flows
    finally:
        sink.close()
