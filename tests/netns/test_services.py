"""Services through a real agent: pods wired by the CNI plugin, the socket hooks attached by the
agent to its --cgroup-root, pod and node processes run inside that cgroup, real sockets.

Services and EndpointSlices are applied to the agent (`ServiceFeed`: the records a test
writes become the Kubernetes objects they stand for, stored with `membranectl apply`), so the
agent's own consumer and LB manager write the maps, and each test controls slice conditions
exactly; the node's pinned maps are opened in the test process for reading only. Slices derived
from stored Pods: tests/netns/test_services_standalone.py.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from membrane.agent.datapath.layout import LB_AFFINITY, LbClient
from membrane.agent.datapath_port import DatapathPort
from membrane.api.state_objects import (
    EndpointPortState,
    EndpointSliceState,
    Kind,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
)
from membrane_testkit.lab import cgroups, probes
from membrane_testkit.lab.node import LabNode, Pod
from membrane_testkit.lab.underlay import Underlay
from membrane_testkit.waiting import wait_for

PROBE = str(Path(__file__).resolve().parents[2] / "membrane_testkit" / "lab" / "service_probe.py")
VIP = "10.96.0.10"
_counter = itertools.count()


def _service_object(svc: ServiceState) -> dict[str, Any]:
    ports = []
    for p in svc.ports:
        target: int | str = int(p.target_port) if p.target_port.isdigit() else (p.target_port or p.port)
        ports.append({**({"name": p.name} if p.name else {}), "protocol": p.protocol, "port": p.port,
                      "targetPort": target, **({"nodePort": p.node_port} if p.node_port else {})})
    spec: dict[str, Any] = {"type": svc.type, "clusterIP": svc.cluster_ips[0], "clusterIPs": list(svc.cluster_ips),
                            "ports": ports}
    if svc.external_ips:
        spec["externalIPs"] = list(svc.external_ips)
    if svc.affinity_timeout:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc.affinity_timeout}}
    if svc.type in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = "Local" if svc.external_traffic_local else "Cluster"
    if svc.internal_traffic_local:
        spec["internalTrafficPolicy"] = "Local"
    if svc.health_check_node_port:
        spec["healthCheckNodePort"] = svc.health_check_node_port
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                           "metadata": {"name": svc.name, "namespace": svc.namespace}, "spec": spec}
    if svc.load_balancer_ips:
        obj["status"] = {"loadBalancer": {"ingress": [{"ip": ip} for ip in svc.load_balancer_ips]}}
    return obj


def _slice_object(sl: EndpointSliceState) -> dict[str, Any]:
    endpoints = []
    for e in sl.endpoints:
        endpoint: dict[str, Any] = {"addresses": list(e.addresses),
                                    "conditions": {"ready": e.ready, "serving": e.serving,
                                                   "terminating": e.terminating}}
        if e.node_name:
            endpoint["nodeName"] = e.node_name
        if e.zone:
            endpoint["zone"] = e.zone
        if e.target:
            namespace, _, name = e.target.partition("/")
            endpoint["targetRef"] = {"kind": "Pod", "namespace": namespace, "name": name}
        endpoints.append(endpoint)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": sl.name, "namespace": sl.namespace,
                         "labels": {"kubernetes.io/service-name": sl.service}},
            "addressType": sl.address_type,
            "ports": [{**({"name": p.name} if p.name else {}), "protocol": p.protocol, "port": p.port}
                      for p in sl.ports],
            "endpoints": endpoints}


def stored_object(record: ServiceState | EndpointSliceState) -> dict[str, Any]:
    """The Kubernetes object a Service or EndpointSlice record stands for (what a user applies)."""
    return _service_object(record) if isinstance(record, ServiceState) else _slice_object(record)


@dataclass
class ServiceFeed:
    """Service and EndpointSlice records applied to the agent as the objects they stand for
    (`membranectl apply` / `delete`, one call each); `port` opens the pinned maps for reading."""

    node: LabNode
    port: DatapathPort
    removed: dict[tuple[Any, str], dict[str, Any]] = field(default_factory=dict)

    def apply(self, *changes: tuple[Any, Any]) -> None:
        """(kind key, record or None) pairs; None deletes the object of that key."""
        applied = [stored_object(obj) for _, obj in changes if obj is not None]
        deleted = []
        for (kind, name), obj in changes:
            if obj is None:
                namespace, _, short = name.partition("/")
                deleted.append({"apiVersion": "v1" if kind == Kind.SERVICE else "discovery.k8s.io/v1",
                                "kind": "Service" if kind == Kind.SERVICE else "EndpointSlice",
                                "metadata": {"name": short, "namespace": namespace}})
        if applied:
            self.node.api("apply", objects=applied)
        if deleted:
            self.node.api("delete", objects=deleted)


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

    def close(self) -> None:
        """Stop the servers it started; close the maps opened for reading."""
        for proc in self.servers:
            proc.kill()
            proc.wait()
        self.feed.port.close()

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


def _socket_entries(lab: ServiceLab) -> set[bytes]:
    """Keys of the unconnected UDP sockets' entries (SOCKET kind) in mb_lb4_affinity_v1."""
    return {bytes(key) for key, _ in lab.feed.port.dp._table(LB_AFFINITY).items()
            if key.client_kind == LbClient.SOCKET}


def service_feed(node: LabNode) -> ServiceFeed:
    """Applies to the node's agent; the node's pinned maps opened for reading (close `feed.port` after)."""
    port = DatapathPort(node.pin_root)
    port.load()  # the node's pinned maps, reopened in this process
    return ServiceFeed(node, port)


@pytest.fixture
def svc_lab(make_node: Any) -> Iterator[ServiceLab]:
    name = f"mbt-sv{os.getpid() % 10000}x{next(_counter)}"
    cgroup = cgroups.create(name)
    lab: ServiceLab | None = None
    try:
        cgroups.child(cgroup, "node")
        node = make_node(extra_args=["--cgroup-root", str(cgroup), "--resync-seconds", "3600"])
        lab = ServiceLab(node, cgroup, service_feed(node))
        yield lab
    finally:
        if lab is not None:
            lab.close()
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
    rows = {row["frontend"]: row for row in svc_lab.node.api("service.list")}
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
    earlier = _socket_entries(svc_lab)
    proc = cgroups.popen_in(group, pods["client1"].netns, [sys.executable, "-S", "-u", PROBE, "client",
                                                           json.dumps(script)], stdout=subprocess.PIPE, text=True)
    try:
        # Its first datagram went (its socket's entry exists): a fixed sleep may end before the
        # client even started on a loaded machine, and the removal would test nothing.
        wait_for(lambda: _socket_entries(svc_lab) - earlier, timeout=30, message="the client socket's entry")
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


def test_agent_kill_9_under_service_traffic(svc_lab: ServiceLab) -> None:
    """kill -9 and restart of the agent while a client keeps connecting and holds a connected
    UDP socket: no connection fails, the held socket keeps its backend, and a restarted load
    balancer (same records, ids read back from the pinned maps) writes nothing."""
    pods = _shop(svc_lab, "web1", "web2", "client1")
    for pod in (pods["web1"], pods["web2"]):
        svc_lab.serve(pod)
    svc = service("web", VIP, *WEB_PORTS)
    node = svc_lab.node
    sl = endpoint_slice("web-a", "web", SLICE_PORTS, ready(pods["web1"], node), ready(pods["web2"], node))
    svc_lab.feed.apply((key(svc), svc), (key(sl), sl))
    before = node.api("bpf.lb")
    steps: list[dict[str, Any]] = [{"op": "udp_hold", "ip": VIP, "port": 53}]
    for _ in range(60):
        steps += [{"op": "tcp", "ip": VIP, "port": 80}, {"op": "sleep", "seconds": 0.15}]
    steps.append({"op": "udp_hold_send"})
    group = cgroups.child(svc_lab.cgroup, "client1")
    proc = cgroups.popen_in(group, pods["client1"].netns, [sys.executable, "-S", "-u", PROBE, "client",
                                                           json.dumps(steps)], stdout=subprocess.PIPE, text=True)
    try:
        # Kill once the client is connecting through the service (its held socket has a backend).
        client_ip = pods["client1"].ip + ":"
        wait_for(lambda: any(f["src"].startswith(client_ip) for f in node.api("bpf.ct")), timeout=30,
                 message="the client's traffic started")
        assert node.stop_agent(signal.SIGKILL) == -signal.SIGKILL
        node.start_agent()
        # The restarted agent's load balancer (records restored from its store, ids read back
        # from the pinned maps) computes what the maps hold: nothing changed (compared below).
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    results = [r for r in json.loads(out) if r]
    held, connects, again = results[0], results[1:-1], results[-1]
    assert len(connects) == 60 and all(r.get("reply") in ("web1:8080", "web2:8080") for r in connects), \
        [r for r in connects if "reply" not in r]
    assert again.get("reply") == held["reply"], (held, again)  # the established socket kept its backend
    after = node.api("bpf.lb")
    assert after["services"] == before["services"] and after["backends"] == before["backends"]
    assert after["rev_nat"] == before["rev_nat"]


@pytest.fixture
def two_node_lab(make_node: Any) -> Iterator[tuple[ServiceLab, LabNode, Pod]]:
    """n1 (client side, socket hooks) and n2 (the backend) over the VXLAN overlay."""
    name = f"mbt-sv{os.getpid() % 10000}x{next(_counter)}"
    underlay = Underlay(f"mbt-ul{os.getpid() % 10000}x{next(_counter)}").create()
    cgroup = cgroups.create(name)
    lab: ServiceLab | None = None
    try:
        ip1, ip2 = "192.0.2.21", "192.0.2.22"
        common = ["--cluster-cidr", "10.200.0.0/16"]
        n1 = make_node("10.200.1.0/24", start=False,
                       extra_args=[*common, "--node-ip", ip1, "--cgroup-root", str(cgroup), "--resync-seconds", "3600"])
        n2 = make_node("10.200.2.0/24", start=False, extra_args=[*common, "--node-ip", ip2])
        underlay.attach(n1.netns, ip1)
        underlay.attach(n2.netns, ip2)
        n1.start_agent()
        n2.start_agent()

        def pod_obj(pod: str, node: LabNode, node_ip: str, ip: str | None = None) -> dict[str, Any]:
            status: dict[str, Any] = {"hostIP": node_ip, **({"podIP": ip, "podIPs": [{"ip": ip}]} if ip else {})}
            return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": "shop",
                                                                    "labels": {"app": pod.rstrip("0123456789")}},
                    "spec": {"nodeName": node.name, "containers": [{"name": "c", "image": "i"}]}, "status": status}
        for node in (n1, n2):
            node.api("apply", objects=[{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                                       pod_obj("client1", n1, ip1), pod_obj("web1", n2, ip2)])
        client, web = n1.add_pod("client1", "shop"), n2.add_pod("web1", "shop")
        n1.api("apply", objects=[pod_obj("web1", n2, ip2, web.ip)])
        n2.api("apply", objects=[pod_obj("client1", n1, ip1, client.ip)])
        lab = ServiceLab(n1, cgroup, service_feed(n1))
        proc = subprocess.Popen(["ip", "netns", "exec", web.netns, sys.executable, "-S", "-u", PROBE, "serve",
                                 "web1", web.ip, "8080", "5353"], stdout=subprocess.PIPE, text=True)
        lab.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        lab.node.pods["client1"] = client
        yield lab, n2, web
    finally:
        if lab is not None:
            lab.close()
        cgroups.remove(cgroup)
        underlay.destroy()


def test_cluster_ip_with_the_backend_on_another_node(two_node_lab: tuple[ServiceLab, LabNode, Pod]) -> None:
    lab, n2, web = two_node_lab
    svc = service("web", VIP, *WEB_PORTS)
    sl = endpoint_slice("web-a", "web", SLICE_PORTS, SliceEndpointState((web.ip,), node_name=n2.name))
    lab.feed.apply((key(svc), svc), (key(sl), sl))
    client = lab.node.pods["client1"]
    tcp, udp = lab.client(client, {"op": "tcp", "ip": VIP, "port": 80}, {"op": "udp_connected", "ip": VIP, "port": 53})
    assert tcp.get("reply") == "web1:8080" and tcp["peer"] == [VIP, 80], tcp
    assert udp.get("replies") == ["web1:5353"] and udp["sources"] == [[VIP, 53]], udp
    # Each node tracked the flow between the pods themselves (the overlay carried the backend's address).
    assert any(f["dst"] == f"{web.ip}:8080" for f in n2.api("bpf.ct"))


def test_connected_udp_sockets_of_a_removed_backend_are_closed(svc_lab: ServiceLab) -> None:
    """A connected UDP socket keeps its backend; when that backend leaves the Service the socket
    is destroyed (the application gets an error) and a new one reaches a live backend."""
    pods = _shop(svc_lab, "web1", "web2", "client1")
    for pod in (pods["web1"], pods["web2"]):
        svc_lab.serve(pod)
    svc = service("web", VIP, *WEB_PORTS)
    node = svc_lab.node
    both = endpoint_slice("web-a", "web", SLICE_PORTS, ready(pods["web1"], node), ready(pods["web2"], node))
    svc_lab.feed.apply((key(svc), svc), (key(both), both))
    steps = [{"op": "udp_hold", "ip": VIP, "port": 53}, {"op": "sleep", "seconds": 2.5}, {"op": "udp_hold_send"},
             {"op": "udp_connected", "ip": VIP, "port": 53}]
    group = cgroups.child(svc_lab.cgroup, "client1")
    proc = cgroups.popen_in(group, pods["client1"].netns, [sys.executable, "-S", "-u", PROBE, "client",
                                                           json.dumps(steps)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        # Remove whichever backend the held socket uses: find it from the socket's peer after translation.
        used = next(s for s in subprocess.run(["ip", "netns", "exec", pods["client1"].netns, "ss", "-Hun"],
                                              capture_output=True, text=True).stdout.split() if s.endswith(":5353"))
        keep = "web2" if used.startswith(pods["web1"].ip + ":") else "web1"
        only = endpoint_slice("web-a", "web", SLICE_PORTS, ready(pods[keep], node))
        svc_lab.feed.apply((key(only), only))
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    held, _, after, fresh = json.loads(out)
    assert held["reply"] != f"{keep}:5353", held
    # Destroyed (the kernel disconnects it: ECONNABORTED, or EDESTADDRREQ for a send on the now
    # unconnected socket), never silently sending into nothing.
    assert after.get("errno") in (errno.ECONNABORTED, errno.EDESTADDRREQ), after
    assert fresh.get("replies") == [f"{keep}:5353"], fresh
