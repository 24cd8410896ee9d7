"""Forged VXLAN for trust tests: craft a tunnel datagram, send it from a namespace (optionally as
an unprivileged user with a plain UDP socket), and record what a pod receives.

The datagram is what a node's tunnel socket would take for another node's traffic: a VXLAN
header whose VNI claims an identity, then an inner Ethernet frame with UDP from `inner_src`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from . import netns

VXLAN_PORT = 8472
UNPRIVILEGED = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")
# The system interpreter: uid 65534 may not be able to read a virtualenv under a private directory.
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# A plain UDP socket (no privilege needed): sends hex bytes a few times, says who it ran as.
_SEND = r"""
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[4])):
    try:
        s.sendto(bytes.fromhex(sys.argv[1]), (sys.argv[2], int(sys.argv[3])))
    except OSError as e:
        print("error", e)
    time.sleep(0.05)  # paces the forged datagrams
print("uid", os.geteuid())
"""

# Prints one line per datagram received: "<source ip> <payload>".
_LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, (src, _) = s.recvfrom(2048); print(src, data.decode(errors="replace"), flush=True)
"""


def vxlan(vni: int, inner_src: str, inner_dst: str, tag: str, dport: int) -> str:
    """A VXLAN datagram's payload (header + inner frame) as hex: UDP `tag` to inner_dst:dport."""
    inner = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / \
        IP(src=inner_src, dst=inner_dst, ttl=64) / UDP(sport=5555, dport=dport) / tag.encode()
    return (b"\x08\x00\x00\x00" + vni.to_bytes(3, "big") + b"\x00" + bytes(inner)).hex()


def send(ns: str, payload_hex: str, dst: str, port: int = VXLAN_PORT, unprivileged: bool = False,
         times: int = 3) -> str:
    """Send from namespace `ns` with a plain UDP socket; returns the sender's report ("uid N")."""
    cmd = [*(UNPRIVILEGED if unprivileged else ()), PYTHON, "-c", _SEND, payload_hex, dst, str(port), str(times)]
    return netns.exec_in(ns, cmd).stdout.strip()


@dataclass
class UdpSink:
    """A UDP listener in a namespace; `lines` fills as datagrams arrive. Stop it with `close`."""

    ns: str
    ip: str
    port: int
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None

    def start(self) -> UdpSink:
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", _LISTEN, self.ip,
                                      str(self.port)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"UDP listener in {self.ns} did not start")
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def got(self, tag: str) -> bool:
        return any(line.endswith(" " + tag) for line in self.lines)

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
