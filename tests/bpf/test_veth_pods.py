"""Real packets: two pods and a node as network namespaces, wired like the agent does.

pod-a (eth0) <-veth-> node (mbta) ... node (mbtb) <-veth-> pod-b (eth0)

from_container is attached on both host veths (to_container too), pods get
podIP/32 with 169.254.1.1 as a permanent-neighbour gateway, and the
endpoints map is filled by hand. Pod-to-pod traffic then only works through
bpf_redirect_peer: the node netns has no forwarding, no addresses on the
host veths, and no routes to the pods.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from membrane.agent.datapath import EndpointEntry
from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.delta import diff
from membrane.policy import EndpointPolicy, FlatKey, FlatValue, Protocol, RuleTable, Verdict, flatten_endpoint
from membrane.policy.entries import Direction

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

GATEWAY = "169.254.1.1"
CLSACT_INGRESS = "ffff:fff2"
CLSACT_EGRESS = "ffff:fff3"


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def link_field(netns: str, ifname: str, field: str) -> str:
    import json

    (info,) = json.loads(sh("ip", "-n", netns, "-j", "link", "show", "dev", ifname))
    return str(info[field])


@dataclass(frozen=True)
class Pod:
    netns: str
    ip: IPv4Address
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_mac: str


def make_pod(node: str, name: str, ip: IPv4Address, host_ifname: str) -> Pod:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", node, "link", "add", host_ifname, "type", "veth", "peer", "name", "eth0", "netns", name)
    sh("ip", "-n", node, "link", "set", host_ifname, "up")
    host_mac = link_field(node, host_ifname, "address")
    for cmd in (
        ["link", "set", "lo", "up"],
        ["link", "set", "eth0", "up"],
        ["addr", "add", f"{ip}/32", "dev", "eth0"],
        ["route", "add", GATEWAY, "dev", "eth0", "scope", "link"],
        ["route", "add", "default", "via", GATEWAY, "dev", "eth0"],
        ["neigh", "add", GATEWAY, "lladdr", host_mac, "dev", "eth0", "nud", "permanent"],
    ):
        sh("ip", "-n", name, *cmd)
    pod_mac = link_field(name, "eth0", "address")
    # What the agent does in the node netns (not needed for pod-to-pod).
    sh("ip", "-n", node, "route", "add", f"{ip}/32", "dev", host_ifname, "scope", "link")
    sh("ip", "-n", node, "neigh", "add", str(ip), "lladdr", pod_mac, "dev", host_ifname, "nud", "permanent")
    return Pod(name, ip, host_ifname, int(link_field(node, host_ifname, "ifindex")), host_mac, pod_mac)


def attach(node: str, ifindex: int, datapath) -> None:  # type: ignore[no-untyped-def]
    from pyroute2 import IPRoute

    with IPRoute(netns=node) as ipr:
        ipr.tc("add", "clsact", ifindex)
        for name, parent in (("from_container", CLSACT_INGRESS), ("to_container", CLSACT_EGRESS)):
            ipr.tc("add-filter", "bpf", ifindex, ":1", fd=datapath.program_fd(name), name=name,
                   parent=parent, classid=1, direct_action=True)


def in_netns(netns: str, script: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True, text=True, timeout=timeout,
    )


PING = """
import os, socket, struct, sys, time
def checksum(data):
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF); total += total >> 16
    return ~total & 0xFFFF
dst, count, ident = sys.argv[1], 3, os.getpid() & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(2)
answered = 0
for seq in range(count):
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"membrane-ping!!!"
    s.sendto(body[:2] + struct.pack("!H", checksum(body)) + body[4:], (dst, 0))
    deadline = time.time() + 2
    while time.time() < deadline:
        packet, (src, _) = s.recvfrom(1500)
        ihl = (packet[0] & 0x0F) * 4
        kind, _, _, rid, rseq = struct.unpack("!BBHHH", packet[ihl:ihl + 8])
        if src == dst and kind == 0 and rid == ident and rseq == seq:
            answered += 1
            break
print(answered)
"""

TCP_SERVER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 8080)); srv.listen(1); srv.settimeout(10)
print("listening", flush=True)
conn, _ = srv.accept(); conn.settimeout(5)
data = conn.recv(65536)
conn.sendall(data.upper()); conn.close(); srv.close()
"""

TCP_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 8080), timeout=5)
c.sendall(b"hello over bpf_redirect_peer" * 100)
c.shutdown(socket.SHUT_WR)
received = b""
while chunk := c.recv(65536):
    received += chunk
print(len(received), received[:28].decode())
"""


@contextmanager
def two_pods(datapath) -> Iterator[tuple[Pod, Pod]]:  # type: ignore[no-untyped-def]
    """Build node + two pods, attach the programs, fill endpoints and, as the agent does for
    pods no policy isolates, allow-all policy entries; tear it all down."""
    tag = f"mbtest-{os.getpid() % 100000}-{uuid.uuid4().hex[:4]}"
    node = f"{tag}-node"
    created: list[str] = []
    pods: list[Pod] = []
    try:
        sh("ip", "netns", "add", node)
        created.append(node)
        for suffix, ip in (("a", "10.202.0.10"), ("b", "10.202.0.11")):
            created.append(f"{tag}-{suffix}")
            pod = make_pod(node, f"{tag}-{suffix}", IPv4Address(ip), f"mbt{suffix}")
            attach(node, pod.host_ifindex, datapath)
            datapath.update_map("endpoints", {pod.ip: EndpointEntry(
                ifindex=pod.host_ifindex, endpoint_id=len(pods) + 1, identity=256 + len(pods),
                pod_mac=pod.pod_mac, host_mac=pod.host_mac)})
            for flat_key, flat_value in flatten_endpoint(len(pods) + 1, EndpointPolicy(), RuleTable()).items():
                datapath.update_map("policy", {flat_key: flat_value})
            pods.append(pod)
        yield pods[0], pods[1]
    finally:
        # Deleting a netns destroys its veth ends, and with them the tc filters.
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        leftover = [n for n in sh("ip", "netns", "list").split() if n.startswith(tag)]
        assert not leftover, f"namespaces left behind: {leftover}"
        if datapath.loaded:  # (the restart test closes it: its pins go with the pin root)
            for endpoint_id in range(1, len(pods) + 1):
                for flat_key in flatten_endpoint(endpoint_id, EndpointPolicy(), RuleTable()):
                    datapath.delete_map("policy", [flat_key])


@pytest.fixture
def topology(datapath) -> Iterator[tuple[Pod, Pod]]:  # type: ignore[no-untyped-def]
    with two_pods(datapath) as pods:
        try:
            yield pods
        finally:
            for pod in pods:
                datapath.delete_map("endpoints", [pod.ip])


def ping(src: Pod, dst: Pod) -> int:
    """Echo requests answered out of 3."""
    result = in_netns(src.netns, PING.replace("sys.argv[1]", repr(str(dst.ip))))
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def counter(dp, reason: str, direction: str) -> int:  # type: ignore[no-untyped-def]
    return sum(s.packets for s in dp.metrics() if s.reason == reason and s.direction == direction)


def test_ping_and_tcp_between_pods(datapath, topology: tuple[Pod, Pod]) -> None:  # type: ignore[no-untyped-def]
    a, b = topology
    node = a.netns.rsplit("-", 1)[0] + "-node"
    # The node does not route between pods: only the redirect can deliver.
    assert sh("ip", "netns", "exec", node, "sysctl", "-n", "net.ipv4.ip_forward").strip() == "0"
    forwarded_before = counter(datapath, "FORWARDED", "EGRESS")

    assert ping(a, b) == 3

    server = subprocess.Popen(
        ["ip", "netns", "exec", b.netns, sys.executable, "-c", textwrap.dedent(TCP_SERVER), str(b.ip)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        client = in_netns(a.netns, TCP_CLIENT.replace("sys.argv[1]", repr(str(b.ip))))
        assert client.returncode == 0, client.stderr
        assert client.stdout.split() == ["2800", "HELLO", "OVER", "BPF_REDIRECT_PEER"]
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()  # only the server process this test started
            server.wait()

    # Every packet of both flows went through the redirect, both ways.
    assert counter(datapath, "FORWARDED", "EGRESS") >= forwarded_before + 6 + 6
    assert counter(datapath, "FORWARDED", "INGRESS") >= forwarded_before + 6 + 6
    flows = {(f.protocol, f.src, f.dst, f.dport): f for f in datapath.conntrack()}
    icmp = [f for (proto, src, dst, _), f in flows.items() if (proto, src, dst) == ("ICMP", a.ip, b.ip)]
    assert icmp and all(f.seen_reply for f in icmp)
    tcp = flows[("TCP", a.ip, b.ip, 8080)]
    assert tcp.seen_reply and tcp.tx_packets >= 3 and tcp.rx_packets >= 2
    assert "TX_CLOSING" in tcp.flags and "RX_CLOSING" in tcp.flags
    spoofs = counter(datapath, "DROP_SPOOFED_IP", "EGRESS") + counter(datapath, "DROP_SPOOFED_MAC", "EGRESS")
    assert spoofs == 0


def test_traffic_survives_an_agent_restart(pin_root: Path) -> None:
    """Programs stay attached and maps stay pinned when the agent's Datapath goes away."""
    from membrane.agent.datapath import Datapath

    first = Datapath(pin_root)
    first.load()
    try:
        with two_pods(first) as (a, b):
            assert ping(a, b) == 3
            first.close()  # the "agent" exits: fds closed, nothing detached or unpinned
            assert ping(a, b) == 3

            second = Datapath(pin_root)  # the restarted agent
            second.load()
            try:
                # Same maps: the old, still-attached programs keep counting into them.
                assert IPv4Address("10.202.0.10") in second.endpoints()
                before = counter(second, "FORWARDED", "EGRESS")
                assert ping(b, a) == 3
                assert counter(second, "FORWARDED", "EGRESS") >= before + 6
            finally:
                second.close()
    finally:
        first.close()


# -- NetworkPolicy on real packets ------------------------------------------------
# Pod a connects to pod b:8080 over real TCP. A deny entry makes connects time
# out (SYN dropped in the kernel, counted as a policy drop), an allow entry lets
# them through, and a connection established under the allow keeps working
# after the policy turns to deny (new ones do not).

# Serves connections one after the other, echoing upper-cased lines, until killed.
ECHO_SERVER = """
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 8080)); srv.listen(8)
print("listening", flush=True)
while True:
    conn, _ = srv.accept()
    with conn, conn.makefile("rwb", buffering=0) as f:
        for line in f:
            f.write(line.upper())
"""

# One connection; sends a line, then another each time the parent writes one on stdin.
CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], 8080), timeout=1.5)
except OSError as exc:
    print("failed", type(exc).__name__, flush=True); sys.exit(0)
f = c.makefile("rwb", buffering=0)
for line in sys.stdin:
    f.write(line.encode()); print(f.readline().decode().strip(), flush=True)
"""


def connect_once(a: Pod, b: Pod) -> str:
    result = in_netns(a.netns, CLIENT.replace("sys.argv[1]", repr(str(b.ip))) + "\n", timeout=10)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def write_policy(dp, entries: dict[FlatKey, FlatValue]) -> None:  # type: ignore[no-untyped-def]
    dp.apply_delta("policy", diff(entries, dp.policy()))


@pytest.fixture
def pods(datapath) -> Iterator[tuple[Pod, Pod]]:  # type: ignore[no-untyped-def]
    with two_pods(datapath) as (a, b):
        for pod, identity in ((a, 256), (b, 257)):
            datapath.update_map("ipcache", {IPv4Network(f"{pod.ip}/32"): IpcacheEntry(identity)})
        try:
            yield a, b
        finally:
            write_policy(datapath, {})
            for pod in (a, b):
                datapath.delete_map("ipcache", [IPv4Network(f"{pod.ip}/32")])
                datapath.delete_map("endpoints", [pod.ip])


def test_policy_on_real_tcp(datapath, pods: tuple[Pod, Pod]) -> None:  # type: ignore[no-untyped-def]
    a, b = pods
    ep_a, ep_b = datapath.endpoints()[a.ip].endpoint_id, datapath.endpoints()[b.ip].endpoint_id
    tcp, ingress, egress = int(Protocol.TCP), int(Direction.INGRESS), int(Direction.EGRESS)
    egress_a = FlatKey(ep_a, 257, egress, tcp, 8080, 16)
    ingress_b = FlatKey(ep_b, 256, ingress, tcp, 8080, 16)
    allow, deny = FlatValue(int(Verdict.ALLOW), 1), FlatValue(int(Verdict.DENY), 2)

    server = subprocess.Popen(
        ["ip", "netns", "exec", b.netns, sys.executable, "-c", textwrap.dedent(ECHO_SERVER), str(b.ip)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    client = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"

        # b denies a: the SYN never reaches b.
        write_policy(datapath, {egress_a: allow, ingress_b: deny})
        before = counter(datapath, "DROP_POLICY_INGRESS", "INGRESS")
        assert connect_once(a, b) == "failed TimeoutError"
        assert counter(datapath, "DROP_POLICY_INGRESS", "INGRESS") > before

        # Allowed both ways: the connection works, replies ride conntrack (no b -> a rule).
        write_policy(datapath, {egress_a: allow, ingress_b: allow})
        client = subprocess.Popen(
            ["ip", "netns", "exec", a.netns, sys.executable, "-c", textwrap.dedent(CLIENT), str(b.ip)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write("hello\n"); client.stdin.flush()
        assert client.stdout.readline().strip() == "HELLO"

        # Policy turns to deny: the established connection carries on, a new one fails.
        write_policy(datapath, {egress_a: deny, ingress_b: deny})
        before = counter(datapath, "DROP_POLICY_EGRESS", "EGRESS")
        client.stdin.write("still there\n"); client.stdin.flush()
        assert client.stdout.readline().strip() == "STILL THERE"
        assert connect_once(a, b) == "failed TimeoutError"
        assert counter(datapath, "DROP_POLICY_EGRESS", "EGRESS") > before
        client.stdin.close()
        assert client.wait(timeout=5) == 0
    finally:
        for proc in (client, server):  # only the processes this test started
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
