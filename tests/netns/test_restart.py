"""kill -9 the agent under a running TCP stream: traffic keeps flowing, state comes back."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from membrane.lab import netns

STREAM_SERVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], 7000)); s.listen()
print("ready", flush=True)
c, _ = s.accept(); total = 0; last = time.monotonic(); gaps = 0.0
while True:
    d = c.recv(65536)
    if not d: break
    now = time.monotonic(); gaps = max(gaps, now - last); last = now; total += len(d)
print(total, round(gaps, 3), flush=True)
"""

STREAM_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7000), timeout=5); end = time.monotonic() + float(sys.argv[2])
chunk = b"x" * 1024
while time.monotonic() < end:
    s.sendall(chunk); time.sleep(0.002)
s.close()
"""


def filters(node, ifname: str) -> int:  # type: ignore[no-untyped-def]
    out = ""
    for hook in ("ingress", "egress"):
        out += netns.exec_in(node.netns, ["tc", "filter", "show", "dev", ifname, hook]).stdout
    return out.count("direct-action")


def test_kill_9_under_traffic(node) -> None:  # type: ignore[no-untyped-def]
    a, b = node.add_pod("a"), node.add_pod("b")
    before_ips = {e["ip"] for e in node.api("endpoint.list")}
    server = subprocess.Popen(["ip", "netns", "exec", b.netns, sys.executable, "-c", STREAM_SERVER, b.ip],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    client = subprocess.Popen(["ip", "netns", "exec", a.netns, sys.executable, "-c", STREAM_CLIENT, b.ip, "6"])
    try:
        time.sleep(1.5)
        node.stop_agent(signal.SIGKILL)
        time.sleep(1.0)  # traffic with no agent at all
        node.start_agent()
        assert client.wait(20) == 0
        total, max_gap = server.stdout.readline().split()
        assert server.wait(10) == 0
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert int(total) > 1_000_000 and float(max_gap) < 0.5, (total, max_gap)
    eps = node.api("endpoint.list")
    assert {e["ip"] for e in eps} == before_ips and all(e["state"] == "ready" for e in eps)
    for ep in eps:
        assert filters(node, ep["host_ifname"]) == 2, "programs attached twice or missing"
    c = node.add_pod("c")
    assert c.ip not in before_ips
    a.exec(["ping", "-c", "1", "-W", "2", c.ip])
