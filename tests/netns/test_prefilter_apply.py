"""Standalone mode (root): `membranectl apply -f` a PacketFilter, and the node's XDP prefilter
drops the packets it names; an invalid one is refused naming the field and nothing changes.

The real agent with `--devices uplink`, the real `membranectl`, datagrams from an outside
namespace to the node's uplink, counted where the node's stack delivers them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode
from membrane_testkit.lab.probes import NODE_UPLINK, world

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
# A standalone agent hands store changes to the stream's consumer (and so to the prefilter
# manager) once the local store is a source of the one pipeline (agent/store_syncing.py, issue
# 10 points 1-2); before that its store reaches the policy manager only.
STANDALONE_STREAM = importlib.util.find_spec("membrane.agent.store_syncing") is not None

MEMBRANECTL = str(Path(sys.executable).parent / "membranectl")
SEND = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    for port in sys.argv[3:]:
        sock.sendto(b"membrane", (sys.argv[1], int(port)))
"""


def packet_filter(port: int, **rule: Any) -> dict[str, Any]:
    return {"apiVersion": "membrane.io/v1alpha1", "kind": "PacketFilter", "metadata": {"name": "cve"},
            "spec": {"rules": [{"name": "udp-port", "action": "Drop",
                                "udp": {"destinationPort": {"min": port, "max": port}}, **rule}]}}


def ctl(node: LabNode, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEMBRANECTL, "--socket", node.socket, *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def delivered(node: LabNode, outside: str, ports: tuple[int, ...], count: int = 40) -> dict[int, int]:
    receiver = netns.popen_in(node.netns, [sys.executable, "-m", "membrane_testkit.lab.flooding", "count",
                                           NODE_UPLINK, ",".join(map(str, ports))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        netns.exec_in(outside, [sys.executable, "-c", SEND, NODE_UPLINK, str(count), *map(str, ports)])
        time.sleep(0.5)
        out, _ = receiver.communicate("", timeout=30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    return {int(k): v for k, v in json.loads(out).items()}


@pytest.mark.skipif(not STANDALONE_STREAM, reason="the standalone agent does not feed its store to the consumer yet")
def test_apply_a_filter_and_its_packets_are_dropped(make_node: Any) -> None:
    node: LabNode = make_node(start=False, extra_args=["--devices", "uplink"])
    with world(node) as outside:
        node.start_agent()
        assert delivered(node, outside, (4242, 7002)) == {4242: 40, 7002: 40}

        done = ctl(node, "apply", "--wait", "-f", "-", stdin=yaml.safe_dump(packet_filter(4242)))
        assert done.returncode == 0, done.stderr
        assert delivered(node, outside, (4242, 7002)) == {4242: 0, 7002: 40}
        stats = json.loads(ctl(node, "prefilter", "stats", "-o", "json").stdout)
        assert [(r["name"], r["dropped_packets"]) for r in stats] == [("cve.udp-port", 40)]

        # Invalid: refused with the field and the reason, exit 1; the filter in force is unchanged.
        bad = ctl(node, "apply", "-f", "-", stdin=yaml.safe_dump(packet_filter(7002, source="10.1.2.3/8")))
        assert bad.returncode == 1
        assert "PacketFilter cve: spec.rules[0].source: Invalid value: '10.1.2.3/8': host bits set" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 2  # "error: rejected:" and the one problem
        assert delivered(node, outside, (4242, 7002)) == {4242: 0, 7002: 40}

        # An edit takes effect at once, with no restart: now 7002 is dropped and 4242 passes.
        done = ctl(node, "apply", "--wait", "-f", "-", stdin=yaml.safe_dump(packet_filter(7002)))
        assert done.returncode == 0, done.stderr
        assert delivered(node, outside, (4242, 7002)) == {4242: 40, 7002: 0}
        listed = ctl(node, "prefilter", "list")
        assert "cve.udp-port" in listed.stdout and "udp dport 7002" in listed.stdout

        assert ctl(node, "delete", "--wait", "-f", "-", stdin=yaml.safe_dump(packet_filter(7002))).returncode == 0
        assert delivered(node, outside, (4242, 7002)) == {4242: 40, 7002: 40}
