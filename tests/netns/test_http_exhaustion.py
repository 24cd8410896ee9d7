"""A real agent's probe/metrics server under a flood of half-open and slow connections:
its thread count stays bounded and kubelet's /healthz is still answered."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode
from membrane_testkit.waiting import wait_for

# Opens N connections to the agent's HTTP port from inside the node, every other one with a
# request head that never finishes, holds them until stdin closes.
FLOOD = """
import socket, sys
n = int(sys.argv[1])
held = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", 9962), timeout=5)
    if i % 2:
        s.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n")
    held.append(s)
print("open", flush=True)
sys.stdin.read()
"""


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_400_half_open_connections_do_not_exhaust_the_agent(node: LabNode) -> None:
    assert node.process is not None
    pid = node.process.pid
    healthz = ["curl", "-s", "-m", "3", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9962/healthz"]
    assert netns.exec_in(node.netns, healthz).stdout == "200"
    threads_before, fds_before = threads(pid), open_fds(pid)
    flood = netns.popen_in(node.netns, [sys.executable, "-c", FLOOD, "400"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE)
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == b"open"
        time.sleep(0.5)  # observation window: the agent serves while the flood is held
        during_threads, during_fds = threads(pid), open_fds(pid)
        # /healthz answers while all 400 are held (the cap pushes out the oldest unfinished ones).
        assert netns.exec_in(node.netns, healthz).stdout == "200"
        assert netns.exec_in(node.netns, ["curl", "-sf", "-m", "5", "http://127.0.0.1:9962/metrics"]).stdout
    finally:
        assert flood.stdin is not None
        flood.stdin.close()
        flood.wait(10)
    # Was 416 threads: one per connection, never timed out.
    assert during_threads <= threads_before + 4, (threads_before, during_threads)
    assert during_fds <= fds_before + 128 + 4, (fds_before, during_fds)  # the connection cap
    assert wait_for(lambda: open_fds(pid) <= fds_before + 2, 10, 0.1, "the flood's descriptors to be closed")
