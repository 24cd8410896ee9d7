"""A lab underlay: the network lab nodes talk over, inside its own namespace.

One "underlay" namespace holds a Linux bridge; each attached node gets a veth pair, one end
(`ul0`, with the node's underlay address) in the node namespace, the other on the bridge. So
nodes reach each other and nothing else: no address or link of the machine is involved, and
deleting the underlay namespace removes the bridge and every pair with it.

`capture_vxlan` listens on one node's bridge port (AF_PACKET: a socket on the bridge itself
would only see frames for the bridge, not those it forwards) and decodes the VXLAN packets
crossing it, which is how tests see the VNI (the source identity) on the wire.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from typing import Any

from . import netns

NODE_IFNAME = "ul0"
BRIDGE = "br0"
VXLAN_PORT = 8472

# Runs inside the underlay namespace: prints one JSON line per VXLAN packet seen on the port
# (UDP to the VXLAN port), then {"done": true} after `seconds` or `count` packets.
_CAPTURE = r"""
import json, socket, struct, sys, time
ifname, port, seconds, count = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
# ETH_P_ALL: a bridge port's frames reach only "all protocol" taps (the bridge consumes them).
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((ifname, 0)); s.settimeout(0.2)
print(json.dumps({"ready": True}), flush=True)
end, seen = time.monotonic() + seconds, 0
def ip(b): return socket.inet_ntoa(b)
while time.monotonic() < end and seen < count:
    try:
        frame = s.recv(65535)
    except socket.timeout:
        continue
    o = 14
    if len(frame) < o + 20 or frame[12:14] != b"\x08\x00" or frame[o] >> 4 != 4 or frame[o + 9] != 17:
        continue
    ihl = (frame[o] & 15) * 4
    u = o + ihl
    sport, dport = struct.unpack("!HH", frame[u:u + 4])
    if dport != port:
        continue
    v = u + 8
    flags, vni = frame[v], int.from_bytes(frame[v + 4:v + 7], "big")
    inner = v + 8 + 14
    proto = frame[inner + 9] if len(frame) >= inner + 20 else None
    print(json.dumps({"outer_src": ip(frame[o + 12:o + 16]), "outer_dst": ip(frame[o + 16:o + 20]),
                      "vni": vni, "vni_flag": bool(flags & 8),
                      "inner_src": ip(frame[inner + 12:inner + 16]), "inner_dst": ip(frame[inner + 16:inner + 20]),
                      "proto": proto}), flush=True)
    seen += 1
print(json.dumps({"done": True}), flush=True)
"""


@dataclass
class Underlay:
    name: str  # the underlay namespace (lab prefix, so lab cleanup finds it)
    subnet_prefix: int = 24
    mtu: int = 1500
    nodes: dict[str, str] = field(default_factory=dict)  # node namespace -> underlay address
    ports: dict[str, str] = field(default_factory=dict)  # node namespace -> its bridge port

    def create(self) -> Underlay:
        netns.create(self.name)
        netns.run(["ip", "-n", self.name, "link", "add", BRIDGE, "type", "bridge"])
        netns.run(["ip", "-n", self.name, "link", "set", BRIDGE, "mtu", str(self.mtu), "up"])
        return self

    def attach(self, node_netns: str, address: str) -> None:
        """Wire a node namespace to the bridge with `address` on its `ul0`."""
        port = f"u{len(self.nodes)}"
        iface = IPv4Interface(f"{address}/{self.subnet_prefix}")
        # Both ends are born in the underlay namespace, the node's end is moved: nothing ever
        # exists in the machine's own namespace.
        netns.run(["ip", "-n", self.name, "link", "add", port, "mtu", str(self.mtu), "type", "veth", "peer",
                   "name", NODE_IFNAME, "mtu", str(self.mtu), "netns", node_netns])
        netns.run(["ip", "-n", self.name, "link", "set", port, "master", BRIDGE, "up"])
        netns.run(["ip", "-n", node_netns, "addr", "add", str(iface), "dev", NODE_IFNAME])
        netns.run(["ip", "-n", node_netns, "link", "set", NODE_IFNAME, "up"])
        self.nodes[node_netns] = str(iface.ip)
        self.ports[node_netns] = port

    def destroy(self) -> None:
        """The namespace takes the bridge and the veth pairs (node ends included) with it."""
        netns.delete(self.name)
        self.nodes.clear()
        self.ports.clear()

    def __enter__(self) -> Underlay:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def capture_vxlan(self, node_netns: str, seconds: float = 5.0, count: int = 1000) -> VxlanCapture:
        """Start capturing VXLAN packets to and from one node (on its bridge port); `stop()` returns them."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, sys.executable, "-c", _CAPTURE,
                                 self.ports[node_netns],
                                 str(VXLAN_PORT), str(seconds), str(count)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the socket is bound: nothing sent from now on is missed
        if '"ready"' not in first:
            proc.kill()
            raise RuntimeError(f"capture did not start: {first} {proc.stderr.read() if proc.stderr else ''}")
        return VxlanCapture(proc)


@dataclass
class VxlanCapture:
    proc: subprocess.Popen[str]

    def stop(self, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait for the capture to end (its time or count) and return the packets seen."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        packets = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [p for p in packets if "vni" in p]
