"""Forged VXLAN identities, tried as an attacker would (root; docs/trust-model.md).

Kubernetes mode: the API stand-in, a real operator, two lab nodes joined by a lab underlay, and a
host on that underlay that is no node. Pod `a` on n1 admits only pods labelled role=trusted; on
n2 run a trusted and an untrusted pod. Every forged packet is a real VXLAN datagram whose VNI is
the trusted pod's identity and whose inner packet is UDP to `a`:

- from the untrusted pod, as uid 65534 with a plain UDP socket, to n1's (and its own node's)
  tunnel port: dropped at the pod's egress on n2 (DROP_POD_TO_TUNNEL_PORT);
- from the host that is no node: dropped on n1 (DROP_UNKNOWN_TUNNEL_PEER);
- from n2's own address but with an inner source n2 does not own (203.0.113.5, a pod of n1):
  dropped on n1 (DROP_TUNNEL_SOURCE_NOT_OWNED);

each counted and shown in flows with its reason, and `a` receives none of them. The same datagram
from n2 for a pod n2 does own is delivered (what a compromised node can still do: the crafted
packets are well-formed, the rules are what stops the others), legitimate cross-node traffic
flows, and NetworkPolicy still judges it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from membrane_testkit.lab import forging, netns
from membrane_testkit.lab.cluster import KubeLab
from membrane_testkit.lab.forging import VXLAN_PORT, UdpSink
from membrane_testkit.lab.node import LabNode, Pod, tool
from membrane_testkit.lab.probes import counters
from membrane_testkit.lab.underlay import Underlay
from membrane_testkit.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, eBPF)")

ROGUE_IP = "192.0.2.200"  # on the underlay, no Node object
FOREIGN = "203.0.113.5"
UDP_PORT = 9000
CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], 80), timeout=1.0).close(); print("ok")
except OSError as e:
    print("fail", e)
"""

SERVE = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 80)); s.listen(64)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""


def vxlan(vni: int, inner_src: str, inner_dst: str, tag: str) -> str:
    return forging.vxlan(vni, inner_src, inner_dst, tag, UDP_PORT)


def send(ns: str, payload: str, dst: str, port: int = VXLAN_PORT, unprivileged: bool = False) -> str:
    return forging.send(ns, payload, dst, port, unprivileged)


def observe(node: LabNode, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run([tool("membranectl"), "--socket", node.socket, "observe", "-o", "json", "--last", "1000",
                           *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def dropped(node: LabNode, reason: str, direction: str) -> int:
    return counters(node).get((f"drop_{reason.lower()}", direction), 0)


def identity(node: LabNode, pod: str) -> int:
    (row,) = [r for r in node.api("endpoint.list") if r["pod"] == f"shop/{pod}"]
    return int(row["identity"])


@dataclass
class Cluster:
    lab: KubeLab
    n1: LabNode
    n2: LabNode
    a: Pod  # on n1, admits role=trusted only
    b: Pod  # a second pod on n1
    trusted: Pod  # on n2
    untrusted: Pod  # on n2
    ip1: str
    ip2: str
    rogue: str  # namespace of the non-node host
    sink: UdpSink  # what `a` received

    @property
    def received(self) -> list[str]:
        return self.sink.lines

    def a_got(self, tag: str) -> bool:
        return self.sink.got(tag)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    lab = KubeLab(cluster_cidr="10.213.0.0/16").start()
    underlay = Underlay(f"mbt-ulf{os.getpid() % 10000}").create()
    rogue = f"mbt-rogue{os.getpid() % 10000}"
    procs: list[subprocess.Popen[str]] = []
    sinks: list[UdpSink] = []
    try:
        nodes = []
        for _ in range(2):
            node = lab.add_node(start=False)
            (ip,) = [a.address for a in lab.core.read_node(node.name).status.addresses if a.type == "InternalIP"]
            underlay.attach(node.netns, str(ip))
            node.extra_args += ["--node-ip", str(ip)]
            node.start_agent()
            nodes.append((node, str(ip)))
        (n1, ip1), (n2, ip2) = nodes
        netns.create(rogue)
        underlay.attach(rogue, ROGUE_IP)
        lab.create_namespace("shop", team="a")
        a, b = lab.run_pod(n1, "shop", "a", app="a"), lab.run_pod(n1, "shop", "b", app="b")
        trusted = lab.run_pod(n2, "shop", "trusted", role="trusted")
        untrusted = lab.run_pod(n2, "shop", "untrusted", role="untrusted")
        lab.networking.create_namespaced_network_policy("shop", {"metadata": {"name": "a-trusted-only"}, "spec": {
            "podSelector": {"matchLabels": {"app": "a"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "trusted"}}}]}]}})
        sink = UdpSink(a.netns, a.ip, UDP_PORT).start()
        sinks.append(sink)
        server = subprocess.Popen(["ip", "netns", "exec", a.netns, sys.executable, "-c", SERVE, a.ip],
                                  stdout=subprocess.PIPE, text=True)
        procs.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        c = Cluster(lab, n1, n2, a, b, trusted, untrusted, ip1, ip2, rogue, sink)
        # The stream reached both nodes (identities, nodes, the policy) once trusted gets through.
        assert wait_for(lambda: connects(trusted, a.ip)), (n1.log_tail(), n2.log_tail())
        yield c
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for sink in sinks:
            sink.close()
        lab.close()
        underlay.destroy()
        netns.delete(rogue)


def connects(src: Pod, ip: str) -> bool:
    return netns.exec_in(src.netns, [sys.executable, "-c", CONNECT, ip], check=False).stdout.strip() == "ok"


def test_legitimate_cross_node_traffic_flows_and_policy_judges_it(cluster: Cluster) -> None:
    c = cluster
    before = dropped(c.n1, "policy_ingress", "ingress")
    assert connects(c.trusted, c.a.ip)
    assert wait_for(lambda: not connects(c.untrusted, c.a.ip))
    send(c.trusted.netns, b"legit".hex(), c.a.ip, UDP_PORT)
    send(c.untrusted.netns, b"denied".hex(), c.a.ip, UDP_PORT)
    assert wait_for(lambda: c.a_got("legit"), 5)
    assert dropped(c.n1, "policy_ingress", "ingress") > before  # judged on n1 with the VNI identity
    assert not c.a_got("denied")


def test_a_pod_cannot_send_to_any_nodes_tunnel_port(cluster: Cluster) -> None:
    """The issue's attack: an unprivileged pod with a plain UDP socket, the trusted identity as VNI."""
    c = cluster
    before = dropped(c.n2, "pod_to_tunnel_port", "egress")
    forged = vxlan(identity(c.n2, "trusted"), c.untrusted.ip, c.a.ip, "forged-by-pod")
    for target in (c.ip1, c.ip2):  # the other node's port and its own node's
        out = send(c.untrusted.netns, forged, target, unprivileged=True)
        assert out.endswith("uid 65534"), out  # really unprivileged
    assert dropped(c.n2, "pod_to_tunnel_port", "egress") == before + 6  # at the pod's egress, on n2
    flows = observe(c.n2, "--drop-reason", "POD_TO_TUNNEL_PORT")
    assert {(f["source_ip"], f["destination_ip"], f["destination_port"]) for f in flows} >= \
        {(c.untrusted.ip, c.ip1, VXLAN_PORT), (c.untrusted.ip, c.ip2, VXLAN_PORT)}, flows
    assert {f["source"]["pod"] for f in flows} == {"untrusted"}
    time.sleep(0.3)  # observation window: a forged packet let through would have arrived by now
    assert not c.a_got("forged-by-pod"), c.received


def test_vxlan_from_a_host_that_is_no_node_is_dropped(cluster: Cluster) -> None:
    c = cluster
    before = dropped(c.n1, "unknown_tunnel_peer", "ingress")
    trusted_id = identity(c.n2, "trusted")
    send(c.rogue, vxlan(trusted_id, c.trusted.ip, c.a.ip, "forged-by-stranger"), c.ip1)
    assert wait_for(lambda: dropped(c.n1, "unknown_tunnel_peer", "ingress") == before + 3, 5)
    flows = observe(c.n1, "--drop-reason", "UNKNOWN_TUNNEL_PEER")
    assert any(f["source_ip"] == c.trusted.ip and f["destination_ip"] == c.a.ip
               and f["source"]["identity"] == trusted_id for f in flows), flows  # the identity it claimed
    time.sleep(0.3)  # observation window: a forged packet let through would have arrived by now
    assert not c.a_got("forged-by-stranger"), c.received


def test_a_node_cannot_speak_for_sources_it_does_not_own(cluster: Cluster) -> None:
    c = cluster
    before = dropped(c.n1, "tunnel_source_not_owned", "ingress")
    trusted_id = identity(c.n2, "trusted")
    send(c.n2.netns, vxlan(trusted_id, FOREIGN, c.a.ip, "forged-foreign"), c.ip1)
    send(c.n2.netns, vxlan(trusted_id, c.b.ip, c.a.ip, "forged-n1-pod"), c.ip1)  # a pod of n1 itself
    assert wait_for(lambda: dropped(c.n1, "tunnel_source_not_owned", "ingress") == before + 6, 5)
    sources = {f["source_ip"] for f in observe(c.n1, "--drop-reason", "TUNNEL_SOURCE_NOT_OWNED")}
    assert {FOREIGN, c.b.ip} <= sources
    time.sleep(0.3)  # observation window: a forged packet let through would have arrived by now
    assert not [line for line in c.received if "forged" in line], c.received


def test_a_node_still_speaks_for_its_own_pods(cluster: Cluster) -> None:
    """What the trust model leaves a (compromised) node: the identities of its own pods. Also shows
    the crafted datagrams are well-formed: the rules, not a malformed packet, stop the others."""
    c = cluster
    send(c.n2.netns, vxlan(identity(c.n2, "trusted"), c.untrusted.ip, c.a.ip, "own-pod"), c.ip1)
    assert wait_for(lambda: c.a_got("own-pod"), 5), c.received


def test_the_rules_hold_across_an_agent_restart(cluster: Cluster) -> None:
    """from_overlay is re-attached after the ipcache is back: nodes are accepted at once, strangers
    still refused."""
    c = cluster
    c.n1.stop_agent()
    c.n1.start_agent()
    assert connects(c.trusted, c.a.ip) and not connects(c.untrusted, c.a.ip)
    before = dropped(c.n1, "unknown_tunnel_peer", "ingress")
    send(c.rogue, vxlan(identity(c.n2, "trusted"), c.trusted.ip, c.a.ip, "forged-after-restart"), c.ip1)
    assert wait_for(lambda: dropped(c.n1, "unknown_tunnel_peer", "ingress") == before + 3, 5)
    time.sleep(0.3)  # observation window: a forged packet let through would have arrived by now
    assert not c.a_got("forged-after-restart"), c.received
