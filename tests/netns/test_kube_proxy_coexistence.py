"""membrane next to kube-proxy and hostPorts: flows the node's netfilter translated work both ways.

A lab node with a real agent gets iptables rules laid out as kube-proxy lays them out
(membrane_testkit/lab/kube_proxy.py: KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* with `statistic`
probabilities, KUBE-MARK-MASQ / KUBE-POSTROUTING) and pods wired by a conflist chaining the
reference `portmap` plugin after membrane (libcni, as container runtimes run it). Real packets:
a client pod reaches a ClusterIP whose backends live on the same node over TCP and connected UDP
(a DNS client's socket: it takes replies only from the address it sent to, so a reply that
skipped kube-proxy's reverse translation never arrives), a hostPort from another pod of the node
and from outside. Before the fix the backend's reply was redirected straight into the client
around netfilter and arrived from the backend's own address.

Plain pod-to-pod traffic must keep the redirect shortcut: the node's IP stack forwards nothing
for it (Ip ForwDatagrams), while every translated packet is routed by it, both ways.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from membrane_testkit.lab import kube_proxy, libcni, netns, probes
from membrane_testkit.lab.kube_proxy import ServicePort
from membrane_testkit.lab.node import LabNode, Pod, tool
from membrane_testkit.lab.probes import NODE_UPLINK, counters, forward_datagrams
from membrane_testkit.lab.underlay import Underlay
from membrane_testkit.waiting import wait_for

CLUSTER_CIDR = "10.200.0.0/16"
CLUSTER_IP = "10.96.0.10"
HOST_PORT = 18080

# In a backend pod: TCP 8080 answers "ok <its own address>", UDP 5353 echoes "echo <own address>".
SERVER = r"""
import socket, sys, threading
ip = sys.argv[1]
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((ip, 8080)); s.listen(128)
    while True:
        c, _ = s.accept(); c.sendall(("ok " + ip).encode()); c.close()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((ip, 5353))
    while True:
        data, peer = u.recvfrom(2048); u.sendto(b"echo " + ip.encode(), peer)
threading.Thread(target=tcp, daemon=True).start()
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# proto ip port timeout: TCP reads the answer; UDP uses a connected socket, as DNS clients do.
CLIENT_SCRIPT = r"""
import socket, sys
proto, ip, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
try:
    if proto == "tcp":
        s = socket.create_connection((ip, port), timeout=timeout); print(s.recv(64).decode())
    else:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(timeout); u.connect((ip, port))
        for _ in range(3):
            u.send(b"q")
            try:
                print(u.recv(64).decode()); break
            except socket.timeout:
                continue
        else:
            print("fail timeout")
except OSError as e:
    print("fail", e)
"""


def ask(src_netns: str, proto: str, ip: str, port: int, timeout: float = 2.0) -> str:
    return netns.exec_in(src_netns, [sys.executable, "-c", CLIENT_SCRIPT, proto, ip, str(port), str(timeout)],
                         check=False, timeout=30).stdout.strip()


def serve(pod: Pod) -> subprocess.Popen[bytes]:
    proc = netns.popen_in(pod.netns, [sys.executable, "-c", SERVER, pod.ip], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(5)


def services(*backends: Pod) -> list[ServicePort]:
    endpoints = tuple((b.ip, 8080) for b in backends)
    udp = tuple((b.ip, 5353) for b in backends)
    return [ServicePort("shop", "web", CLUSTER_IP, 80, endpoints, "tcp", "http", node_port=30080),
            ServicePort("kube-system", "dns", CLUSTER_IP, 53, udp, "udp", "dns")]


@pytest.fixture
def node(make_node: Any) -> LabNode:
    """The lab node (conftest's `world` attaches to it), told the cluster CIDR as kube-proxy is."""
    made: LabNode = make_node(extra_args=["--cluster-cidr", CLUSTER_CIDR])
    return made


def test_the_generated_layout_is_kube_proxys() -> None:
    """The rules as kube-proxy writes them: probabilities 1/n, 1/(n-1), ..., last endpoint unconditional."""
    sp = ServicePort("shop", "web", CLUSTER_IP, 80, (("10.200.1.2", 8080), ("10.200.1.3", 8080),
                                                      ("10.200.1.4", 8080)), "tcp", "http")
    text = kube_proxy.render([sp], CLUSTER_CIDR)
    svc = kube_proxy.svc_chain(sp)
    assert svc.startswith("KUBE-SVC-") and len(svc) == len("KUBE-SVC-") + 16
    picks = [line for line in text.splitlines() if line.startswith(f"-A {svc} ") and "KUBE-SEP-" in line]
    assert ["--probability 0.3333333333" in picks[0], "--probability 0.5000000000" in picks[1],
            "statistic" not in picks[2]] == [True, True, True], picks
    assert f"-A {svc} ! -s {CLUSTER_CIDR} -d {CLUSTER_IP}/32 -p tcp" in text
    assert "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000" in text
    assert "DNAT --to-destination 10.200.1.4:8080" in text


def test_clusterip_with_backends_on_the_same_node(node: LabNode, servers: list[subprocess.Popen[bytes]]) -> None:
    client, b1, b2 = node.add_pod("client", "shop"), node.add_pod("b1", "shop"), node.add_pod("b2", "shop")
    servers.extend([serve(b1), serve(b2)])
    kube_proxy.install(node.netns, services(b1, b2), CLUSTER_CIDR)

    routed = forward_datagrams(node.netns)
    answers = [ask(client.netns, "tcp", CLUSTER_IP, 80) for _ in range(16)]
    assert set(answers) == {f"ok {b1.ip}", f"ok {b2.ip}"}, answers  # both KUBE-SEP chains picked, all answered
    # Every packet of those connections, both ways, was routed by the node (netfilter translated it).
    assert forward_datagrams(node.netns) - routed >= 16 * 4
    udp = {ask(client.netns, "udp", CLUSTER_IP, 53) for _ in range(8)}
    assert udp <= {f"echo {b1.ip}", f"echo {b2.ip}"} and udp, udp  # connected UDP: replies from the ClusterIP

    # The conntrack entries the backends' veths made are marked: their packets go through the stack.
    entries = [e for e in node.api("bpf.ct") if e["dst"] in (f"{b1.ip}:8080", f"{b2.ip}:8080")]
    assert entries and all("VIA_STACK" in e["flags"] for e in entries), entries
    assert counters(node).get(("drop_policy_ingress", "ingress"), 0) == 0


def test_plain_pod_to_pod_keeps_the_redirect(node: LabNode, servers: list[subprocess.Popen[bytes]]) -> None:
    client, b1 = node.add_pod("client", "shop"), node.add_pod("b1", "shop")
    servers.append(serve(b1))
    kube_proxy.install(node.netns, services(b1), CLUSTER_CIDR)
    routed = forward_datagrams(node.netns)
    for _ in range(5):
        assert ask(client.netns, "tcp", b1.ip, 8080) == f"ok {b1.ip}"
        assert ask(client.netns, "udp", b1.ip, 5353) == f"echo {b1.ip}"
    assert forward_datagrams(node.netns) == routed  # redirected pod to pod: the stack routed none of it
    entries = [e for e in node.api("bpf.ct") if e["dst"] == f"{b1.ip}:8080"]
    assert entries and not any("VIA_STACK" in e["flags"] for e in entries), entries


def observe(node: LabNode, *args: str) -> list[dict[str, Any]]:
    done = subprocess.run([tool("membranectl"), "--socket", node.socket, "observe", "-o", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) if args[0] == "json" else {"line": line} for line in done.stdout.splitlines() if line]


def test_flows_say_which_path_a_connection_takes(node: LabNode, servers: list[subprocess.Popen[bytes]]) -> None:
    """A ClusterIP connection is reported as going through the node's stack (where kube-proxy
    translates it), on the client's veth and on the backend's; pod to pod as redirected."""
    client, b1 = node.add_pod("client", "shop"), node.add_pod("b1", "shop")
    servers.append(serve(b1))
    kube_proxy.install(node.netns, services(b1), CLUSTER_CIDR)
    assert ask(client.netns, "tcp", CLUSTER_IP, 80) == f"ok {b1.ip}"
    assert ask(client.netns, "tcp", b1.ip, 8080) == f"ok {b1.ip}"

    def new_flows() -> list[dict[str, Any]]:
        return [f for f in observe(node, "json", "--last", "1000", "--from-pod", "shop/client")
                if f["trace_event"] == "new" and f["protocol"] == "TCP"]
    assert wait_for(lambda: len(new_flows()) >= 3)
    paths = {(f["destination_ip"], f["destination_port"], f["direction"]): f["path"] for f in new_flows()}
    assert paths == {(CLUSTER_IP, 80, "egress"): "stack",  # client's veth: to the stack
                     (b1.ip, 8080, "ingress"): "stack",  # backend's veth: out of the stack, translated
                     (b1.ip, 8080, "egress"): "redirect"}, paths  # pod to pod: the shortcut
    lines = [f["line"] for f in observe(node, "compact", "--last", "1000", "--from-pod", "shop/client")]
    assert any(CLUSTER_IP in line and "via-stack" in line for line in lines), lines


def test_clusterip_hairpin_to_the_client_itself(node: LabNode, world: str, servers: list[subprocess.Popen[bytes]]) -> None:
    """The backend reaches itself through the Service: kube-proxy masquerades it (KUBE-SEP's -s rule) to an
    address of the node (the uplink's: a node without any address could not masquerade)."""
    b1 = node.add_pod("b1", "shop")
    servers.append(serve(b1))
    kube_proxy.install(node.netns, services(b1), CLUSTER_CIDR)
    assert ask(b1.netns, "tcp", CLUSTER_IP, 80) == f"ok {b1.ip}"
    assert ask(b1.netns, "udp", CLUSTER_IP, 53) == f"echo {b1.ip}"


def test_nodeport_from_outside_the_node(node: LabNode, world: str, servers: list[subprocess.Popen[bytes]]) -> None:
    b1 = node.add_pod("b1", "shop")
    servers.append(serve(b1))
    kube_proxy.install(node.netns, services(b1), CLUSTER_CIDR)
    assert ask(world, "tcp", NODE_UPLINK, 30080) == f"ok {b1.ip}"


# --- hostPort through the reference portmap plugin, chained after membrane ---------------------


@pytest.fixture(scope="module")
def libcni_client() -> Path:
    return libcni.client()


def chained_add(node: LabNode, client: Path, tmp: Path, pod: str, host_port: int) -> Pod:
    """CNI ADD of a pod through the conflist membrane + portmap (snat), run by libcni in the node."""
    bins, tools = tmp / "bin", tmp / "tools"
    bins.mkdir(exist_ok=True)
    tools.mkdir(exist_ok=True)
    if not (bins / "membrane-cni").exists():
        (bins / "membrane-cni").symlink_to(tool("membrane-cni"))
        # No ip6tables on the plugins' PATH: see tests/netns/test_cni_chain.py.
        (tools / "iptables").symlink_to(shutil.which("iptables") or "/usr/sbin/iptables")
    conflist = tmp / "chain.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "membrane-chain", "plugins": [
        {"type": "membrane-cni", "agentSocket": node.socket},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}))
    environ = {"PATH": str(tools), "CNI_PATH": f"{bins}:{libcni.REFERENCE_PLUGINS}", "CNI_CACHE_DIR": str(tmp / "cache")}
    pod_ns = f"{node.netns}-{pod}"
    netns.create(pod_ns)
    caps = {"portMappings": [{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp"},
                             {"hostPort": host_port, "containerPort": 5353, "protocol": "udp"}]}
    argv = [str(client), "ADD", str(conflist), pod, str(netns.NETNS_DIR / pod_ns), "eth0", json.dumps(caps)]
    done = netns.exec_in(node.netns, ["env", "-i", *(f"{k}={v}" for k, v in environ.items()), *argv],
                         check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # Registered with the lab node so that its teardown deletes it (through membrane alone).
    added = Pod(pod, "default", pod_ns, pod, result)
    node.pods[pod] = added
    return added


def test_hostport_from_another_pod_and_from_outside(node: LabNode, world: str, libcni_client: Path,
                                                      tmp_path: Path, servers: list[subprocess.Popen[bytes]]) -> None:
    backend = chained_add(node, libcni_client, tmp_path, "hp", HOST_PORT)
    client = node.add_pod("client", "shop")
    servers.append(serve(backend))
    assert "CNI-HOSTPORT-DNAT" in netns.exec_in(node.netns, ["iptables-save", "-t", "nat"]).stdout
    # From another pod of the node, to the node's address and the host port.
    assert ask(client.netns, "tcp", NODE_UPLINK, HOST_PORT) == f"ok {backend.ip}"
    assert ask(client.netns, "udp", NODE_UPLINK, HOST_PORT) == f"echo {backend.ip}"
    # From outside the node.
    assert ask(world, "tcp", NODE_UPLINK, HOST_PORT) == f"ok {backend.ip}"
    assert ask(world, "udp", NODE_UPLINK, HOST_PORT) == f"echo {backend.ip}"
    assert wait_for(lambda: any(e["src"].startswith(client.ip + ":") and "VIA_STACK" in e["flags"]
                                for e in node.api("bpf.ct")))


# --- backends on another node: the stack's route into the tunnel and to_overlay ----------------


def _pod_obj(name: str, node: LabNode, node_ip: str, pod_ip: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"hostIP": node_ip}
    if pod_ip:
        status.update(podIP=pod_ip, podIPs=[{"ip": pod_ip}])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"nodeName": node.name, "containers": [{"name": "c", "image": "i"}]}, "status": status}


def _node_obj(node: LabNode, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name},
            "spec": {"podCIDR": node.pod_cidr}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


@pytest.fixture
def two_nodes(make_node: Any, servers: list[subprocess.Popen[bytes]]) -> Iterator[dict[str, Any]]:
    """n1 (client c1, backend b1) and n2 (client c2, backend b2) over a lab underlay, standalone
    mode with the same objects on both (identities agree); each node's kube-proxy layout sends
    the ClusterIP to the other node's backend."""
    underlay = Underlay(f"mbt-kpul{os.getpid() % 10000}").create()
    try:
        ip1, ip2 = "192.0.2.21", "192.0.2.22"
        n1 = make_node("10.200.1.0/24", start=False, extra_args=["--cluster-cidr", CLUSTER_CIDR, "--node-ip", ip1])
        n2 = make_node("10.200.2.0/24", start=False, extra_args=["--cluster-cidr", CLUSTER_CIDR, "--node-ip", ip2])
        underlay.attach(n1.netns, ip1)
        underlay.attach(n2.netns, ip2)
        n1.start_agent()
        n2.start_agent()
        common = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                  _node_obj(n1, ip1), _node_obj(n2, ip2), _pod_obj("c1", n1, ip1), _pod_obj("b1", n1, ip1),
                  _pod_obj("c2", n2, ip2), _pod_obj("b2", n2, ip2)]
        for node in (n1, n2):
            node.api("apply", objects=common)
        pods = {"c1": n1.add_pod("c1", "shop"), "b1": n1.add_pod("b1", "shop"),
                "c2": n2.add_pod("c2", "shop"), "b2": n2.add_pod("b2", "shop")}
        n1.api("apply", objects=[_pod_obj(p, n2, ip2, pods[p].ip) for p in ("c2", "b2")])
        n2.api("apply", objects=[_pod_obj(p, n1, ip1, pods[p].ip) for p in ("c1", "b1")])
        servers.extend([serve(pods["b1"]), serve(pods["b2"])])
        kube_proxy.install(n1.netns, services(pods["b2"]), CLUSTER_CIDR)
        kube_proxy.install(n2.netns, services(pods["b1"]), CLUSTER_CIDR)
        yield {"n1": n1, "n2": n2, "ip1": ip1, "ip2": ip2, **pods}
    finally:
        underlay.destroy()


def test_clusterip_with_the_backend_on_another_node(two_nodes: dict[str, Any]) -> None:
    t = two_nodes
    for client, backend, here in ((t["c1"], t["b2"], t["n1"]), (t["c2"], t["b1"], t["n2"])):
        assert ask(client.netns, "tcp", CLUSTER_IP, 80) == f"ok {backend.ip}", (client.name, backend.name)
        assert ask(client.netns, "udp", CLUSTER_IP, 53) == f"echo {backend.ip}", (client.name, backend.name)
        # The client's node tracked the translated flow as its stack's (to_overlay): replies come back through it.
        entries = [e for e in here.api("bpf.ct") if e["dst"] == f"{backend.ip}:8080"]
        assert entries and all("VIA_STACK" in e["flags"] for e in entries), entries
        # Plain pod to pod across the nodes still goes the direct way.
        assert ask(client.netns, "tcp", backend.ip, 8080) == f"ok {backend.ip}"
    for node in (t["n1"], t["n2"]):
        drops = {k: v for k, v in counters(node).items() if k[0] != "forwarded"}
        assert drops == {}, (node.name, drops)


def test_the_node_itself_reaches_pods_of_another_node(two_nodes: dict[str, Any]) -> None:
    """The node's own connections to another node's pod leave through to_overlay with the node's
    address (the route's preferred source) and REMOTE_NODE as VNI; the reply comes back to the stack."""
    t = two_nodes
    assert ask(t["n1"].netns, "tcp", t["b2"].ip, 8080) == f"ok {t['b2'].ip}"
    assert ask(t["n1"].netns, "udp", t["b2"].ip, 5353) == f"echo {t['b2'].ip}"


def test_nodeport_from_outside_to_a_backend_on_another_node(two_nodes: dict[str, Any]) -> None:
    """kube-proxy masquerades NodePort traffic to the node's address: it leaves through to_overlay
    with REMOTE_NODE as VNI, the backend's reply comes back through the tunnel and the stack."""
    t = two_nodes
    with probes.world(t["n1"]) as world:
        assert ask(world, "tcp", NODE_UPLINK, 30080) == f"ok {t['b2'].ip}"
    entries = [e for e in t["n1"].api("bpf.ct") if e["dst"] == f"{t['b2'].ip}:8080"]
    assert any(e["src"].startswith(t["ip1"] + ":") and "VIA_STACK" in e["flags"] for e in entries), entries
