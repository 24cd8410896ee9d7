"""Reading a lab node from outside: datapath counters, IP stack statistics, an uplink to a
"world" namespace that has no route to the pods (so an answer proves masquerading)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from . import netns
from .node import LabNode

NODE_UPLINK = "198.18.0.1"
WORLD_IP = "198.18.0.2"


def counters(node: LabNode) -> dict[tuple[str, str], int]:
    return {(r["reason"], r["direction"]): r["packets"] for r in node.api("bpf.metrics")}


def forward_datagrams(ns: str) -> int:
    """Ip ForwDatagrams of a namespace: rises only when its IP stack routes a packet."""
    lines = netns.exec_in(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    head, values = [line.split() for line in lines if line.startswith("Ip:")][:2]
    return int(values[head.index("ForwDatagrams")])


@contextmanager
def world(node: LabNode) -> Iterator[str]:
    name = f"{node.netns}-world"
    netns.create(name)
    try:
        netns.run(["ip", "-n", node.netns, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0",
                   "netns", name])
        netns.run(["ip", "-n", node.netns, "addr", "add", f"{NODE_UPLINK}/30", "dev", "uplink"])
        netns.run(["ip", "-n", node.netns, "link", "set", "uplink", "up"])
        netns.run(["ip", "-n", name, "addr", "add", f"{WORLD_IP}/30", "dev", "eth0"])
        netns.run(["ip", "-n", name, "link", "set", "eth0", "up"])
        yield name
    finally:
        netns.delete(name)
