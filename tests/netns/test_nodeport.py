"""Per-packet Services from outside the cluster (bpf_host.c on --devices): NodePort, externalIP,
LoadBalancer IP, real packets.

Two nodes on one underlay bridge, each agent with `--devices ul0` (its uplink); an "outside"
namespace on the same bridge plays a client outside the cluster. Backends are pods wired by
the CNI plugin on either node. Service records reach node 1's LB manager through a state
consumer (as in test_services.py: `ServiceFeed`, with node 1's address for its NodePorts).
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
from typing import Any

import pytest

from membrane.agent.datapath_port import DatapathPort
from membrane.api.state_objects import (
    EndpointPortState,
    EndpointSliceState,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
)
from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, Pod
from membrane_testkit.lab.underlay import Underlay

from .test_services import PROBE, ServiceFeed, key

IP1, IP2, OUTSIDE = "192.0.2.31", "192.0.2.32", "192.0.2.50"
EXTERNAL = "198.51.100.10"
VIP = "10.96.0.20"
NODE_PORT, NODE_PORT_UDP = 30080, 30053
HEALTH_PORT = 32100
_counter = itertools.count()


@dataclass
class NodePortLab:
    n1: LabNode
    n2: LabNode
    outside: str  # the outside client's namespace
    feed: ServiceFeed
    web1: Pod  # on n1
    web2: Pod  # on n2
    servers: list[subprocess.Popen[str]] = field(default_factory=list)

    def client(self, *steps: dict[str, Any], timeout: float = 60) -> list[dict[str, Any]]:
        done = netns.run(["ip", "netns", "exec", self.outside, sys.executable, "-S", "-u", PROBE, "client",
                          json.dumps(list(steps))], timeout=timeout)
        return json.loads(done.stdout)  # type: ignore[no-any-return]


def _serve(pod: Pod, name: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", pod.netns, sys.executable, "-S", "-u", PROBE, "serve",
                             name, pod.ip, "8080", "5353", "peer"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _feed(node: LabNode) -> ServiceFeed:
    """Applies Services to the node's agent; its pinned maps opened for reading."""
    port = DatapathPort(node.pin_root)
    port.load()
    return ServiceFeed(node, port)


@pytest.fixture
def np_lab(make_node: Any) -> Iterator[NodePortLab]:
    tag = f"{os.getpid() % 10000}x{next(_counter)}"
    underlay = Underlay(f"mbt-ul{tag}").create()
    outside = f"mbt-out{tag}"
    lab: NodePortLab | None = None
    servers: list[subprocess.Popen[str]] = []
    try:
        common = ["--cluster-cidr", "10.200.0.0/16", "--devices", "ul0", "--resync-seconds", "3600"]
        n1 = make_node("10.200.1.0/24", start=False, extra_args=[*common, "--node-ip", IP1])
        n2 = make_node("10.200.2.0/24", start=False, extra_args=[*common, "--node-ip", IP2])
        underlay.attach(n1.netns, IP1)
        underlay.attach(n2.netns, IP2)
        netns.create(outside)
        underlay.attach(outside, OUTSIDE)
        netns.run(["ip", "-n", outside, "route", "add", f"{EXTERNAL}/32", "via", IP1])
        n1.start_agent()
        n2.start_agent()

        def pod_obj(pod: str, node: LabNode, node_ip: str, ip: str | None = None) -> dict[str, Any]:
            status: dict[str, Any] = {"hostIP": node_ip, **({"podIP": ip, "podIPs": [{"ip": ip}]} if ip else {})}
            return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": "shop",
                                                                    "labels": {"app": "web"}},
                    "spec": {"nodeName": node.name, "containers": [{"name": "c", "image": "i"}]}, "status": status}
        for node in (n1, n2):
            node.api("apply", objects=[{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                                       pod_obj("web1", n1, IP1), pod_obj("web2", n2, IP2)])
        web1, web2 = n1.add_pod("web1", "shop"), n2.add_pod("web2", "shop")
        n1.api("apply", objects=[pod_obj("web2", n2, IP2, web2.ip)])
        n2.api("apply", objects=[pod_obj("web1", n1, IP1, web1.ip)])
        servers += [_serve(web1, "web1"), _serve(web2, "web2")]
        lab = NodePortLab(n1, n2, outside, _feed(n1), web1, web2, servers)
        yield lab
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        if lab is not None:
            lab.feed.port.close()
        netns.delete(outside)
        underlay.destroy()


def nodeport_service(name: str = "web", *, external_local: bool = False, health: int = 0,
                     external_ips: tuple[str, ...] = ()) -> ServiceState:
    return ServiceState("shop", name, "NodePort" if not health else "LoadBalancer", (VIP,),
                        (ServicePortState("http", "TCP", 80, "8080", node_port=NODE_PORT),
                         ServicePortState("dns", "UDP", 53, "5353", node_port=NODE_PORT_UDP)),
                        external_ips=external_ips, external_traffic_local=external_local,
                        health_check_node_port=health)


def web_slice(lab: NodePortLab, *pods: Pod) -> EndpointSliceState:
    nodes = {lab.web1.name: lab.n1.name, lab.web2.name: lab.n2.name}
    return EndpointSliceState("shop", "web-a", "web", "IPv4",
                              (EndpointPortState("http", "TCP", 8080), EndpointPortState("dns", "UDP", 5353)),
                              tuple(SliceEndpointState((p.ip,), node_name=nodes[p.name], target=f"shop/{p.name}")
                                    for p in pods))


def test_nodeport_and_external_ip_from_outside_local_and_remote_backends(np_lab: NodePortLab) -> None:
    lab = np_lab
    svc = nodeport_service(external_ips=(EXTERNAL,))
    sl = web_slice(lab, lab.web1, lab.web2)
    lab.feed.apply((key(svc), svc), (key(sl), sl))
    got = lab.client(*[{"op": "tcp", "ip": IP1, "port": NODE_PORT}] * 24,
                     *[{"op": "tcp", "ip": EXTERNAL, "port": 80}] * 8)
    assert all("reply" in r for r in got), [r for r in got if "reply" not in r]
    replies = [r["reply"] for r in got]
    # Both backends answer (Maglev over the 5-tuple: the client's port differs every time); the
    # local one sees the client's own address, the other node's sees node 1's (SNAT).
    assert {"web1:8080@" + OUTSIDE, "web2:8080@" + IP1} == set(replies), replies
    assert all(r["peer"] == [IP1, NODE_PORT] for r in got[:24]) and all(r["peer"] == [EXTERNAL, 80] for r in got[24:])
    # UDP: every reply comes from the frontend, datagram after datagram on one flow.
    (udp,) = lab.client({"op": "udp_connected", "ip": IP1, "port": NODE_PORT_UDP, "count": 3})
    assert udp["sources"] == [[IP1, NODE_PORT_UDP]] * 3 and len(set(udp["replies"])) == 1, udp
    # The other node's backend was reached over the overlay: node 2 tracked node 1 -> web2.
    assert any(f["src"].startswith(IP1 + ":") and f["dst"] == f"{lab.web2.ip}:8080" for f in lab.n2.api("bpf.ct"))


def test_no_backend_is_refused_at_once(np_lab: NodePortLab) -> None:
    lab = np_lab
    svc = nodeport_service(external_ips=(EXTERNAL,))
    lab.feed.apply((key(svc), svc))  # no slice: no endpoint
    tcp, ext, udp = lab.client({"op": "tcp", "ip": IP1, "port": NODE_PORT, "timeout": 5},
                               {"op": "tcp", "ip": EXTERNAL, "port": 80, "timeout": 5},
                               {"op": "udp_connected", "ip": IP1, "port": NODE_PORT_UDP, "timeout": 5})
    for result in (tcp, ext, udp):
        assert result.get("errno") == errno.ECONNREFUSED, result  # RST / ICMP port unreachable
        assert result["ms"] < 1000, result  # refused, not a 5 s timeout


_HTTP_GET = """
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=5)
conn.request("GET", "/healthz")
reply = conn.getresponse()
print(json.dumps({"status": reply.status, "body": json.loads(reply.read())}))
"""


def _health(lab: NodePortLab, port: int) -> dict[str, Any]:
    done = netns.run(["ip", "netns", "exec", lab.outside, sys.executable, "-c", _HTTP_GET, IP1, str(port)])
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_external_traffic_policy_local_keeps_the_client_address(np_lab: NodePortLab) -> None:
    lab = np_lab
    # The agent's own health check server answers in node 1's namespace.
    svc = nodeport_service(external_local=True, health=HEALTH_PORT, external_ips=(EXTERNAL,))
    sl = web_slice(lab, lab.web1, lab.web2)
    lab.feed.apply((key(svc), svc), (key(sl), sl))
    got = lab.client(*[{"op": "tcp", "ip": IP1, "port": NODE_PORT}] * 12,
                     *[{"op": "tcp", "ip": EXTERNAL, "port": 80}] * 4)
    assert {r.get("reply") for r in got} == {"web1:8080@" + OUTSIDE}, got  # only the local one, source kept
    assert _health(lab, HEALTH_PORT) == {"status": 200, "body": {"service": {"namespace": "shop", "name": "web"},
                                                                 "localEndpoints": 1}}
    # No local endpoint: refused, never sent to the other node; the health check says 503.
    only_remote = web_slice(lab, lab.web2)
    lab.feed.apply((key(only_remote), only_remote))
    (refused,) = lab.client({"op": "tcp", "ip": IP1, "port": NODE_PORT, "timeout": 5})
    assert refused.get("errno") == errno.ECONNREFUSED and refused["ms"] < 1000, refused
    assert _health(lab, HEALTH_PORT)["status"] == 503
    # Back, and the port closes with the service.
    lab.feed.apply((key(sl), sl))
    assert _health(lab, HEALTH_PORT)["status"] == 200
    lab.feed.apply((key(svc), None))
    done = netns.run(["ip", "netns", "exec", lab.outside, sys.executable, "-c", _HTTP_GET, IP1,
                      str(HEALTH_PORT)], check=False)
    assert done.returncode != 0 and "ConnectionRefused" in done.stderr, done


def test_maglev_tables_and_flows_survive_a_restart(np_lab: NodePortLab) -> None:
    lab = np_lab
    svc = nodeport_service()
    sl = web_slice(lab, lab.web1, lab.web2)
    lab.feed.apply((key(svc), svc), (key(sl), sl))
    before = lab.feed.port.read_map("lb_maglev")
    assert len(before) == 2 * 1021  # one table per NodePort frontend (TCP and UDP)
    assert {lab.feed.port.read_map("lb_backends")[b].address.exploded for b in before.values()} == \
        {lab.web1.ip, lab.web2.ip}
    held = [subprocess.Popen(["ip", "netns", "exec", lab.outside, sys.executable, "-S", "-u", PROBE, "client",
                              json.dumps([{"op": "udp_hold", "ip": IP1, "port": NODE_PORT_UDP},
                                          {"op": "sleep", "seconds": 25},
                                          {"op": "udp_hold_send"}])],
                             stdout=subprocess.PIPE, text=True) for _ in range(8)]
    try:
        time.sleep(2)
        # kill -9 the agent and start it again; a new LB manager computes the same tables.
        assert lab.n1.process is not None
        lab.n1.process.send_signal(signal.SIGKILL)
        lab.n1.process.wait()
        lab.n1.start_agent()  # its load balancer: records from its store, ids from the pinned maps
        assert lab.feed.port.read_map("lb_maglev") == before
        # A third backend changes about a third of the table, yet every held flow keeps its backend.
        grown = web_slice(lab, lab.web1, lab.web2)
        extra = SliceEndpointState(("10.200.1.250",), node_name=lab.n1.name)
        grown = EndpointSliceState(grown.namespace, grown.name, grown.service, grown.address_type, grown.ports,
                                   (*grown.endpoints, extra))
        lab.feed.apply((key(grown), grown))
        after = lab.feed.port.read_map("lb_maglev")
        moved = sum(1 for k, v in before.items() if after[k] != v) / len(before)
        assert 0.2 < moved < 0.45, moved
        results = [json.loads(p.communicate(timeout=60)[0]) for p in held]
    finally:
        for proc in held:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for first, _, again in results:
        assert "reply" in again and again["reply"] == first["reply"], (first, again)
