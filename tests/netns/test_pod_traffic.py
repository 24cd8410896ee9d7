"""Same-node pod traffic through the eBPF datapath over real packets."""

from __future__ import annotations

import subprocess
import sys

from membrane_testkit.lab import netns
from membrane_testkit.lab.probes import NODE_UPLINK, WORLD_IP, counters, forward_datagrams

ECHO_SERVER = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if proto == "tcp":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((host, port)); s.listen()
    print("ready", flush=True)
    while True:
        c, addr = s.accept(); data = c.recv(1024); c.sendall(data + b" from " + addr[0].encode()); c.close()
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((host, port)); print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(1024); s.sendto(data + b" from " + addr[0].encode(), addr)
"""

CLIENT = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=5); s.sendall(b"hello"); print(s.recv(1024).decode())
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); s.sendto(b"hello", (host, port))
    print(s.recvfrom(1024)[0].decode())
"""


def serve(ns: str, proto: str, host: str, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_SERVER, proto, host, str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def talk(ns: str, proto: str, host: str, port: int) -> str:
    return netns.exec_in(ns, [sys.executable, "-c", CLIENT, proto, host, str(port)], timeout=20).stdout.strip()


def test_pod_to_pod_icmp_tcp_udp_skip_the_host_stack(node) -> None:  # type: ignore[no-untyped-def]
    a, b, c = (node.add_pod(n) for n in ("a", "b", "c"))
    before, fwd_before = counters(node), forward_datagrams(node.netns)
    for src, dst in ((a, b), (b, c), (c, a)):
        src.exec(["ping", "-c", "2", "-i", "0.2", "-W", "2", dst.ip])
    servers = [serve(b.netns, "tcp", b.ip, 8080), serve(c.netns, "udp", c.ip, 5353)]
    try:
        assert talk(a.netns, "tcp", b.ip, 8080) == f"hello from {a.ip}"
        assert talk(a.netns, "udp", c.ip, 5353) == f"hello from {a.ip}"
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    after = counters(node)
    grew = after.get(("forwarded", "egress"), 0) - before.get(("forwarded", "egress"), 0)
    assert grew >= 12 + 10, f"eBPF forwarded counter rose by only {grew}"
    # bpf_redirect_peer: the node's IP stack never routed these packets.
    assert forward_datagrams(node.netns) == fwd_before
    assert not list(netns.exec_in(node.netns, ["ip", "-o", "link", "show", "type", "bridge"]).stdout.splitlines())
    ct = node.api("bpf.ct")
    assert any(e["proto"] == "tcp" and e["dst"].startswith(b.ip) for e in ct), ct


def test_spoofed_source_ip_and_mac_are_dropped_and_counted(node) -> None:  # type: ignore[no-untyped-def]
    a, b = node.add_pod("a"), node.add_pod("b")
    a.exec(["ping", "-c", "1", "-W", "2", b.ip])
    before = counters(node)
    a.exec(["ip", "addr", "add", "10.200.1.250/32", "dev", "eth0"])
    spoofed = a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "1", "-I", "10.200.1.250", b.ip], check=False)
    assert spoofed.returncode != 0
    mid = counters(node)
    assert mid.get(("drop_spoofed_ip", "egress"), 0) >= before.get(("drop_spoofed_ip", "egress"), 0) + 2
    a.exec(["ip", "addr", "del", "10.200.1.250/32", "dev", "eth0"])
    a.exec(["ip", "link", "set", "eth0", "address", "02:00:de:ad:be:ef"])
    assert a.exec(["ping", "-c", "2", "-i", "0.2", "-W", "1", b.ip], check=False).returncode != 0
    after = counters(node)
    assert after.get(("drop_spoofed_mac", "egress"), 0) >= mid.get(("drop_spoofed_mac", "egress"), 0) + 2


def test_pod_to_node_and_to_the_outside_masqueraded(node, world) -> None:  # type: ignore[no-untyped-def]
    a = node.add_pod("a")
    a.exec(["ping", "-c", "1", "-W", "2", NODE_UPLINK])
    server = serve(world, "tcp", WORLD_IP, 9000)
    try:
        # The world has no route to the pod CIDR: an answer proves the source was rewritten.
        assert talk(a.netns, "tcp", WORLD_IP, 9000) == f"hello from {NODE_UPLINK}"
    finally:
        server.kill()
        server.wait()
    a.exec(["ping", "-c", "1", "-W", "2", WORLD_IP])


def test_node_reaches_pod_and_metrics_are_exported(node, world) -> None:  # type: ignore[no-untyped-def]
    a = node.add_pod("a")  # the node's own address (its uplink) is the source, as kubelet probes are
    netns.exec_in(node.netns, ["ping", "-c", "2", "-i", "0.2", "-W", "2", a.ip])
    out = netns.exec_in(node.netns, ["curl", "-sf", "http://127.0.0.1:9962/metrics"]).stdout
    assert 'membrane_datapath_packets_total{direction="ingress",reason="forwarded",verdict="forwarded"}' in out
    assert "membrane_cni_request_duration_seconds_count" in out and 'membrane_endpoints{state="ready"} 1.0' in out
    for path in ("/healthz", "/readyz"):
        netns.exec_in(node.netns, ["curl", "-sf", f"http://127.0.0.1:9962{path}"])
