"""Services through a real agent: pods wired by the CNI plugin, the socket hooks attached by the
agent to its --cgroup-root, pod and node processes run inside that cgroup, real sockets.

The Service and EndpointSlice records reach the load balancer through the state consumer, as
the stream delivers them (`ServiceFeed`: a consumer with the LB manager registered, in the test
process, on the node's pinned maps). Standalone `membranectl apply` of Services goes through
the same consumer once the standalone agent consumes its local stream (issue 10, points 1-2).
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from membrane.agent.datapath_port import DatapathPort
from membrane.agent.lb_syncing import LB_KINDS, LbManager
from membrane.agent.state_consuming import StateConsumer
from membrane.api.state_objects import (
    Change,
    EndpointPortState,
    EndpointSliceState,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
    StateUpdate,
)
from membrane_testkit.lab import cgroups, probes
from membrane_testkit.lab.node import LabNode, Pod

PROBE = str(Path(__file__).resolve().parents[2] / "membrane_testkit" / "lab" / "service_probe.py")
VIP = "10.96.0.10"
_counter = itertools.count()


@dataclass
class ServiceFeed:
    """The stream's records for Services, applied through a state consumer with the LB manager."""

    node: LabNode
    port: DatapathPort
    consumer: StateConsumer
    lb: LbManager
    version: int = 0

    def apply(self, *changes: tuple[Any, Any]) -> None:
        """(kind key, record or None) pairs in one update."""
        self.version += 1
        update = StateUpdate(self.version, "test", False, [Change(key, obj) for key, obj in changes])
        self.consumer.apply_update(update)


@dataclass
class ServiceLab:
    node: LabNode
    cgroup: Path
    feed: ServiceFeed
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def serve(self, pod: Pod, tcp: str = "8080", udp: str = "5353") -> None:
        proc = cgroups.popen_in(cgroups.child(self.cgroup, pod.name), pod.netns,
                                [sys.executable, "-S", "-u", PROBE, "serve", pod.name, pod.ip, tcp, udp],
                                stdout=subprocess.PIPE, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

    def client(self, where: Pod | None, *steps: dict[str, Any], timeout: float = 60) -> list[dict[str, Any]]:
        """Steps run by a process of pod `where` (None: a process of the node itself)."""
        group = cgroups.child(self.cgroup, where.name if where else "node")
        done = cgroups.run_in(group, where.netns if where else self.node.netns,
                              [sys.executable, "-S", "-u", PROBE, "client", json.dumps(list(steps))], timeout=timeout)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]


def service(name: str, vip: str, *ports: tuple[str, str, int, str], affinity: int = 0) -> ServiceState:
    return ServiceState("shop", name, "ClusterIP", (vip,),
                        tuple(ServicePortState(n, proto, port, target) for n, proto, port, target in ports),
                        affinity_timeout=affinity)


def endpoint_slice(name: str, svc: str, ports: tuple[tuple[str, str, int], ...],
                   *endpoints: SliceEndpointState) -> EndpointSliceState:
    return EndpointSliceState("shop", name, svc, "IPv4", tuple(EndpointPortState(*p) for p in ports), endpoints)


def ready(pod: Pod, node: LabNode, **conditions: bool) -> SliceEndpointState:
    return SliceEndpointState((pod.ip,), node_name=node.name, target=f"shop/{pod.name}", **conditions)


def key(obj: ServiceState | EndpointSliceState) -> tuple[Any, str]:
    return (obj.kind, obj.key)


WEB_PORTS = (("http", "TCP", 80, "8080"), ("dns", "UDP", 53, "5353"))
SLICE_PORTS = (("http", "TCP", 8080), ("dns", "UDP", 5353))


@pytest.fixture
def svc_lab(make_node: Any) -> Iterator[ServiceLab]:
    name = f"mbt-sv{os.getpid() % 10000}x{next(_counter)}"
    cgroup = cgroups.create(name)
    lab: ServiceLab | None = None
    port: DatapathPort | None = None
    try:
        cgroups.child(cgroup, "node")
        node = make_node(extra_args=["--cgroup-root", str(cgroup), "--resync-seconds", "3600"])
        port = DatapathPort(node.pin_root)
        port.load()  # the node's pinned maps, reopened in this process
        consumer = StateConsumer(node.name)
        consumer.stream_id = "test"  # deltas from version 1 on
        lb = LbManager(port, node.name, lambda: ())
        for kind in LB_KINDS:
            consumer.register(kind, lb)
        lab = ServiceLab(node, cgroup, ServiceFeed(node, port, consumer, lb))
        yield lab
    finally:
        if lab is not None:
            for proc in lab.servers:
                proc.kill()
                proc.wait()
        if port is not None:
            port.close()
        cgroups.remove(cgroup)


def _shop(lab: ServiceLab, *names: str) -> dict[str, Pod]:
    lab.node.api("apply", objects=[{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}] + [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": n, "namespace": "shop",
                                                         "labels": {"app": n.rstrip("0123456789")}},
         "spec": {"containers": [{"name": "c", "image": "i"}]}} for n in names])
    return {n: lab.node.add_pod(n, "shop") for n in names}


def test_cluster_ip_from_a_pod_and_from_the_node(svc_lab: ServiceLab) -> None:
    pods = _shop(svc_lab, "web1", "web2", "client1")
    web1, web2, client = pods["web1"], pods["web2"], pods["client1"]
    for pod in (web1, web2):
        svc_lab.serve(pod)
    svc = service("web", VIP, *WEB_PORTS)
    sl = endpoint_slice("web-a", "web", SLICE_PORTS, ready(web1, svc_lab.node), ready(web2, svc_lab.node))
    svc_lab.feed.apply((key(svc), svc), (key(sl), sl))
    tcp = svc_lab.client(client, *[{"op": "tcp", "ip": VIP, "port": 80}] * 20)
    assert {r.get("reply") for r in tcp} == {"web1:8080", "web2:8080"}, tcp
    assert all(r["peer"] == [VIP, 80] for r in tcp)
    (connected, unconnected) = svc_lab.client(client, {"op": "udp_connected", "ip": VIP, "port": 53, "count": 3},
                                              {"op": "udp_sendto", "ip": VIP, "port": 53, "count": 3})
    for result in (connected, unconnected):
        assert result["sources"] == [[VIP, 53]] * 3, result  # replies show the service address
        assert len(set(result["replies"])) == 1 and result["replies"][0] in ("web1:5353", "web2:5353")
    # The node's own processes (host network pods, kubelet) too.
    with probes.world(svc_lab.node):  # the node gets an address of its own (an uplink)
        from_node = svc_lab.client(None, *[{"op": "tcp", "ip": VIP, "port": 80}] * 10)
    assert {r.get("reply") for r in from_node} <= {"web1:8080", "web2:8080"} and all("reply" in r for r in from_node)
    # No per-packet NAT: conntrack (and so policy and flows) saw the backend, never the ClusterIP.
    flows = svc_lab.node.api("bpf.ct")
    assert any(f["src"].startswith(client.ip + ":") and f["dst"] in (f"{web1.ip}:8080", f"{web2.ip}:8080")
               for f in flows), flows
    assert not any(f["dst"].startswith(VIP + ":") for f in flows)


def test_no_endpoint_is_refused_at_once(svc_lab: ServiceLab) -> None:
    client = _shop(svc_lab, "client1")["client1"]
    svc = service("empty", VIP, *WEB_PORTS)
    svc_lab.feed.apply((key(svc), svc))
    tcp, udp = svc_lab.client(client, {"op": "tcp", "ip": VIP, "port": 80, "timeout": 5},
                              {"op": "udp_connected", "ip": VIP, "port": 53, "timeout": 5})
    for result in (tcp, udp):
        assert result.get("errno") == errno.ECONNREFUSED, result
        assert result["ms"] < 1000, result  # refused, not a 5 s timeout


def test_terminating_endpoints_serve_only_when_none_is_ready(svc_lab: ServiceLab) -> None:
    pods = _shop(svc_lab, "web1", "web2", "client1")
    for pod in (pods["web1"], pods["web2"]):
        svc_lab.serve(pod)
    svc = service("web", VIP, *WEB_PORTS)
    node = svc_lab.node
    draining = endpoint_slice("web-a", "web", SLICE_PORTS,
                              ready(pods["web1"], node, ready=False, serving=True, terminating=True),
                              ready(pods["web2"], node, ready=False, serving=False))
    svc_lab.feed.apply((key(svc), svc), (key(draining), draining))
    got = svc_lab.client(pods["client1"], *[{"op": "tcp", "ip": VIP, "port": 80}] * 8)
    assert {r.get("reply") for r in got} == {"web1:8080"}, got  # the serving terminating one
    back = endpoint_slice("web-a", "web", SLICE_PORTS,
                          ready(pods["web1"], node, ready=False, serving=True, terminating=True),
                          ready(pods["web2"], node))
    svc_lab.feed.apply((key(back), back))
    got = svc_lab.client(pods["client1"], *[{"op": "tcp", "ip": VIP, "port": 80}] * 8)
    assert {r.get("reply") for r in got} == {"web2:8080"}, got  # ready again: only ready ones


def test_a_pod_reaches_itself_through_its_service(svc_lab: ServiceLab) -> None:
    web1 = _shop(svc_lab, "web1")["web1"]
    svc_lab.serve(web1)
    svc = service("web", VIP, *WEB_PORTS)
    sl = endpoint_slice("web-a", "web", SLICE_PORTS, ready(web1, svc_lab.node))
    svc_lab.feed.apply((key(svc), svc), (key(sl), sl))
    tcp, udp = svc_lab.client(web1, {"op": "tcp", "ip": VIP, "port": 80},
                              {"op": "udp_connected", "ip": VIP, "port": 53})
    assert tcp.get("reply") == "web1:8080" and tcp["peer"] == [VIP, 80], tcp
    assert udp.get("replies") == ["web1:5353"] and udp["sources"] == [[VIP, 53]], udp


def test_named_ports_per_endpoint_and_several_ports(svc_lab: ServiceLab) -> None:
    """targetPort "web" is 8080 on web1 and 8081 on web2 (two slices, as the controller groups
    them); port 53 over TCP and UDP are two frontends."""
    pods = _shop(svc_lab, "web1", "web2", "client1")
    svc_lab.serve(pods["web1"], tcp="8080,5353", udp="5353")
    svc_lab.serve(pods["web2"], tcp="8081,5353", udp="5353")
    svc = service("web", VIP, ("http", "TCP", 80, "web"), ("dns", "UDP", 53, "5353"), ("dns-tcp", "TCP", 53, "5353"))
    node = svc_lab.node
    a = endpoint_slice("web-a", "web", (("http", "TCP", 8080), ("dns", "UDP", 5353), ("dns-tcp", "TCP", 5353)),
                       ready(pods["web1"], node))
    b = endpoint_slice("web-b", "web", (("http", "TCP", 8081), ("dns", "UDP", 5353), ("dns-tcp", "TCP", 5353)),
                       ready(pods["web2"], node))
    svc_lab.feed.apply((key(svc), svc), (key(a), a), (key(b), b))
    client = pods["client1"]
    http = svc_lab.client(client, *[{"op": "tcp", "ip": VIP, "port": 80}] * 16)
    assert {r.get("reply") for r in http} == {"web1:8080", "web2:8081"}, http
    dns_tcp = svc_lab.client(client, *[{"op": "tcp", "ip": VIP, "port": 53}] * 8)
    assert {r.get("reply") for r in dns_tcp} <= {"web1:5353", "web2:5353"} and all("reply" in r for r in dns_tcp)
    (dns_udp,) = svc_lab.client(client, {"op": "udp_sendto", "ip": VIP, "port": 53})
    assert dns_udp["replies"][0] in ("web1:5353", "web2:5353") and dns_udp["sources"] == [[VIP, 53]]
    rows = {row["frontend"]: row for row in svc_lab.feed.lb.service_rows()}
    assert set(rows) == {f"{VIP}:80/TCP", f"{VIP}:53/UDP", f"{VIP}:53/TCP"}
    assert {b["address"] for b in rows[f"{VIP}:80/TCP"]["backends"]} == {f"{pods['web1'].ip}:8080",
                                                                        f"{pods['web2'].ip}:8081"}


def test_network_policy_judges_the_backend_pod(svc_lab: ServiceLab) -> None:
    """Kubernetes: policy applies after translation, to the backend pod and its port."""
    pods = _shop(svc_lab, "web1", "client1")
    svc_lab.serve(pods["web1"])
    svc = service("web", VIP, *WEB_PORTS)
    sl = endpoint_slice("web-a", "web", SLICE_PORTS, ready(pods["web1"], svc_lab.node))
    svc_lab.feed.apply((key(svc), svc), (key(sl), sl))

    def web_policy(port: int) -> dict[str, Any]:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "web-in", "namespace": "shop"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                                      "ports": [{"protocol": "TCP", "port": port}]}]}}
    client = pods["client1"]
    svc_lab.node.api("apply", objects=[web_policy(8080)], wait=True)  # the backend's port: allowed
    (ok,) = svc_lab.client(client, {"op": "tcp", "ip": VIP, "port": 80})
    assert ok.get("reply") == "web1:8080", ok
    svc_lab.node.api("apply", objects=[web_policy(80)], wait=True)  # the service's port admits nothing
    (denied,) = svc_lab.client(client, {"op": "tcp", "ip": VIP, "port": 80, "timeout": 1})
    assert "reply" not in denied and denied.get("errno") in (errno.ETIMEDOUT, 0, None), denied


def test_udp_flows_leave_a_removed_backend(svc_lab: ServiceLab) -> None:
    pods = _shop(svc_lab, "web1", "web2", "client1")
    for pod in (pods["web1"], pods["web2"]):
        svc_lab.serve(pod)
    svc = service("web", VIP, *WEB_PORTS)
    node = svc_lab.node
    both = endpoint_slice("web-a", "web", SLICE_PORTS, ready(pods["web1"], node), ready(pods["web2"], node))
    svc_lab.feed.apply((key(svc), svc), (key(both), both))
    script = [{"op": "udp_sendto", "ip": VIP, "port": 53, "count": 30, "gap": 0.05}]
    group = cgroups.child(svc_lab.cgroup, "client1")
    proc = cgroups.popen_in(group, pods["client1"].netns, [sys.executable, "-S", "-u", PROBE, "client",
                                                           json.dumps(script)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        # Whichever backend the socket uses, web1 goes: its datagrams must move (or stay on web2).
        only2 = endpoint_slice("web-a", "web", SLICE_PORTS, ready(pods["web2"], node))
        svc_lab.feed.apply((key(only2), only2))
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    (result,) = json.loads(out)
    replies = result["replies"]
    assert len(replies) == 30, result  # none lost
    assert replies[-10:] == ["web2:5353"] * 10, replies  # after the removal: the live one
