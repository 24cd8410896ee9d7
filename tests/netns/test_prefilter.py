"""The XDP prefilter on a lab node's uplink, with real traffic from an "outside" namespace.

- a packet filter drops exactly the packets its rules match while other traffic flows;
- a ratelimit rule lets through what its rate allows, per source;
- program replacements in the middle of a stream lose nothing and let nothing through;
- the agent: --devices attaches (mode reported), a missing device stops the start, a deny file
  of 100,000 prefixes is enforced and updated by difference, and a killed agent leaves the
  filter enforcing; its restart replaces the program without losing a packet.

Frames are crafted with scapy and sent through an AF_PACKET socket in the outside namespace
(membrane_testkit/lab/flooding.py); a receiver in the node counts what its stack delivered per
UDP port, so "dropped" and "passed" are counted on both sides of the device.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether

from membrane.agent.datapath import Datapath
from membrane.agent.datapath.syscalls import prog_name
from membrane.agent.netlinking import Netlink, in_netns
from membrane.agent.prefilter_syncing import PrefilterManager
from membrane.agent.xdp_attaching import XdpAttacher
from membrane.api.state_objects import Kind
from membrane.operator.state_building import packet_filter_state
from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode
from membrane_testkit.lab.probes import NODE_UPLINK, WORLD_IP, world

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

OTHER_IP = "198.18.1.3"  # a second outside source (the world's second address, routed by the node)


@dataclass
class Outside:
    node: LabNode
    world: str
    node_mac: str
    world_mac: str

    def frame(self, src: str = WORLD_IP, dport: int = 7002, **ip: Any) -> bytes:
        return bytes(Ether(src=self.world_mac, dst=self.node_mac) / IP(src=src, dst=NODE_UPLINK, **ip)
                     / UDP(sport=40000, dport=dport) / b"membrane")

    def send(self, frames: Sequence[bytes], count: int, pps: float) -> subprocess.Popen[str]:
        proc = netns.popen_in(self.world, [sys.executable, "-m", "membrane_testkit.lab.flooding", "send", "eth0",
                                           str(count), str(pps)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
        assert proc.stdin is not None
        proc.stdin.write("".join(f.hex() + "\n" for f in frames))
        proc.stdin.close()
        return proc

    def send_all(self, frames: Sequence[bytes], count: int, pps: float) -> None:
        proc = self.send(frames, count, pps)
        assert proc.wait(120) == 0


class Receiver:
    """Counts UDP datagrams per port in the node (what its stack delivered)."""

    def __init__(self, node: LabNode, ports: Sequence[int]) -> None:
        self.proc = netns.popen_in(node.netns, [sys.executable, "-m", "membrane_testkit.lab.flooding", "count",
                                                NODE_UPLINK, ",".join(map(str, ports))],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def counts(self, settle: float = 0.5) -> dict[int, int]:
        time.sleep(settle)  # the last frames are still in the device's queue
        out, _ = self.proc.communicate("", timeout=30)
        return {int(k): v for k, v in json.loads(out).items()}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _mac(ns: str, ifname: str) -> str:
    return str(json.loads(netns.run(["ip", "-n", ns, "-j", "link", "show", ifname]).stdout)[0]["address"])


@pytest.fixture
def outside(make_node: Any) -> Iterator[Outside]:
    node = make_node(start=False)
    with world(node) as name:
        netns.run(["ip", "-n", name, "addr", "add", f"{OTHER_IP}/32", "dev", "eth0"])
        netns.run(["ip", "-n", node.netns, "route", "add", f"{OTHER_IP}/32", "dev", "uplink"])
        # No ARP in the way of crafted frames' replies, nor of the pings.
        netns.run(["ip", "-n", node.netns, "neigh", "replace", WORLD_IP, "lladdr", _mac(name, "eth0"),
                   "dev", "uplink", "nud", "permanent"])
        netns.run(["ip", "-n", node.netns, "neigh", "replace", OTHER_IP, "lladdr", _mac(name, "eth0"),
                   "dev", "uplink", "nud", "permanent"])
        yield Outside(node, name, _mac(node.netns, "uplink"), _mac(name, "eth0"))


@dataclass
class InProcess:
    """The prefilter's datapath, manager and attacher, run by the test inside the node."""

    dp: Datapath
    manager: PrefilterManager
    attacher: XdpAttacher
    path: str

    def filters(self, **specs: dict[str, Any]) -> None:
        for name, spec in specs.items():
            record = packet_filter_state({"apiVersion": "membrane.io/v1alpha1", "kind": "PacketFilter",
                                          "metadata": {"name": name, "generation": 1}, "spec": spec})
            self.manager.on_update(Kind.PACKET_FILTER, name, record)
        self.manager.apply()

    def counted(self, name: str) -> tuple[int, int]:
        row = next(r for r in self.manager.counters() if r.name == name)
        return row.packets, row.dropped_packets


@pytest.fixture
def inproc(outside: Outside) -> Iterator[InProcess]:
    path = f"/run/netns/{outside.node.netns}"
    dp = Datapath(outside.node.pin_root)
    dp.load()
    netlink: Netlink = in_netns(path, Netlink)  # its sockets live in the node's namespace
    attacher = XdpAttacher(netlink, ["uplink"], "auto", prog_name)
    try:
        attached = in_netns(path, lambda: attacher.attach(dp.program_fd("xdp_prefilter")))
        assert [(a.device, a.mode) for a in attached] == [("uplink", "native")]  # veth has native XDP
        yield InProcess(dp, PrefilterManager(dp), attacher, path)
    finally:
        in_netns(path, attacher.detach)
        netlink.close()
        dp.close()
        dp.unpin()


def test_a_rule_drops_exactly_the_matching_packets(outside: Outside, inproc: InProcess) -> None:
    inproc.filters(cve={"rules": [
        {"name": "udp-7001", "action": "Drop", "udp": {"destinationPort": {"min": 7001, "max": 7001}}},
        {"name": "evil-bit", "action": "Drop", "ipv4": {"fragment": {"reserved": True}}},
        {"name": "audit", "action": "Count", "udp": {}}]})
    receiver = Receiver(outside.node, [7001, 7002])
    try:
        frames = [outside.frame(dport=7001), outside.frame(dport=7002), outside.frame(dport=7002, flags="evil")]
        outside.send_all(frames, 900, 3000)
        ping = netns.exec_in(outside.world, ["ping", "-c", "3", "-i", "0.2", "-W", "1", NODE_UPLINK], check=False)
        counts = receiver.counts()
    finally:
        receiver.close()
    assert counts == {7001: 0, 7002: 300}
    assert ping.returncode == 0, ping.stdout
    assert inproc.counted("cve.udp-7001") == (300, 300)
    assert inproc.counted("cve.evil-bit") == (300, 300)
    assert inproc.counted("cve.audit")[0] == 300  # only what the drop rules before it let through


def test_the_rate_limit_holds_per_source(outside: Outside, inproc: InProcess) -> None:
    inproc.filters(limits={"rules": [{"name": "udp", "action": "RateLimit", "udp": {},
                                      "rateLimit": {"packetsPerSecond": 100, "burst": 20}}]})
    receiver = Receiver(outside.node, [7001, 7002])
    try:
        started = time.monotonic()
        outside.send_all([outside.frame(dport=7001), outside.frame(src=OTHER_IP, dport=7002)], 6000, 2000)
        seconds = time.monotonic() - started
        counts = receiver.counts()
    finally:
        receiver.close()
    allowed = 20 + 100 * seconds  # the burst, then the rate, for each source
    for port in (7001, 7002):
        assert 0.8 * 100 * seconds <= counts[port] <= allowed * 1.05 + 5, (counts, seconds)
    assert inproc.counted("limits.udp")[1] == 6000 - counts[7001] - counts[7002]


def test_replacing_the_program_loses_nothing(outside: Outside, inproc: InProcess) -> None:
    inproc.filters(cve={"rules": [{"name": "udp-7001", "action": "Drop",
                                   "udp": {"destinationPort": {"min": 7001, "max": 7001}}}]})
    second = Datapath(outside.node.pin_root)  # the next agent's build: same pinned maps
    second.load()
    receiver = Receiver(outside.node, [7001, 7002])
    try:
        sender = outside.send([outside.frame(dport=7001), outside.frame(dport=7002)], 8000, 2000)
        fds = [second.program_fd("xdp_prefilter"), inproc.dp.program_fd("xdp_prefilter")]
        swaps = 0
        while sender.poll() is None:
            modes = in_netns(inproc.path, lambda: inproc.attacher.attach(fds[swaps % 2]))
            assert modes[0].mode == "native"
            swaps += 1
            time.sleep(0.05)
        assert sender.wait() == 0
        counts = receiver.counts()
    finally:
        receiver.close()
        second.close()
    assert swaps >= 20
    assert counts == {7001: 0, 7002: 4000}


# --- the agent ---------------------------------------------------------------------------------

def _deny_file(path: Path, extra: Sequence[str], count: int = 100_000) -> None:
    rng = random.Random(7)
    prefixes = {IPv4Network((rng.randrange(1 << 32) & ~0xFF, 24)) for _ in range(count * 2)}
    prefixes = {p for p in prefixes if not p.overlaps(IPv4Network("198.18.0.0/15"))}
    lines = [str(p) for p in sorted(prefixes)[:count - len(extra)]] + list(extra)
    path.write_text("# generated\n" + "\n".join(lines) + "\n")


def _status(node: LabNode) -> dict[str, Any]:
    return dict(node.api("status")["prefilter"])


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def test_agent_attaches_to_its_devices_and_reports_the_mode(outside: Outside) -> None:
    node = outside.node
    node.extra_args = ["--devices", "uplink", "--xdp-mode", "generic"]
    node.start_agent()
    status = _status(node)
    assert [(d["device"], d["mode"]) for d in status["devices"]] == [("uplink", "generic")]
    metrics = netns.exec_in(node.netns, [sys.executable, "-c", "import urllib.request; print(urllib.request."
                                         "urlopen('http://127.0.0.1:9962/metrics').read().decode())"]).stdout
    assert 'membrane_xdp_attached{device="uplink",mode="generic"} 1.0' in metrics
    node.stop_agent()
    # Another setting: the device keeps its program (generic) and the agent replaces it in place.
    node.extra_args = ["--devices", "uplink"]
    node.start_agent()
    assert [(d["device"], d["mode"]) for d in _status(node)["devices"]] == [("uplink", "generic")]


def test_a_missing_device_stops_the_start(outside: Outside) -> None:
    node = outside.node
    node.extra_args = ["--devices", "uplink,nosuch0"]
    node.start_agent(wait_ready=False)  # it must exit, however long the start takes on a loaded machine
    assert node.process is not None and node.process.wait(300) != 0, node.log_tail(40)
    assert "--devices: no device 'nosuch0' in" in node.log_tail(40)  # main.py or xdp_attaching's words


def test_deny_file_of_100k_prefixes_survives_kill_and_restart(outside: Outside) -> None:
    node = outside.node
    deny = node.workdir / "deny.txt"
    _deny_file(deny, [f"{OTHER_IP}/32"])
    node.extra_args = ["--devices", "uplink", "--prefilter-cidrs", str(deny), "--resync-seconds", "1"]
    node.start_agent()
    status = _status(node)
    assert status["prefixes"] == 100_000, status
    program = status["devices"][0]["program_id"]
    receiver = Receiver(node, [7001, 7002])
    try:
        # 2000 a second for ~5 s: the allowed source to 7002, the denied one to 7001.
        sender = outside.send([outside.frame(dport=7002), outside.frame(src=OTHER_IP, dport=7001)], 10_000, 2000)
        time.sleep(1)
        assert node.stop_agent(signal_kill()) is not None  # kill -9: programs and maps stay
        time.sleep(1)
        node.start_agent()  # replaces the program in place, adopts the maps: no write, no gap
        assert sender.wait(60) == 0
        counts = receiver.counts()
    finally:
        receiver.close()
    assert counts == {7001: 0, 7002: 5000}, counts
    after = _status(node)
    assert after["devices"][0]["program_id"] != program and after["prefixes"] == 100_000
    # The file changes: the next resync writes the difference (one prefix), the source passes.
    _deny_file(deny, [], count=99_999)
    _wait(lambda: _status(node)["prefixes"] == 99_999, 120, "the deny file's change enforced")
    ping = netns.exec_in(outside.world, ["ping", "-c", "2", "-W", "1", "-I", OTHER_IP, NODE_UPLINK], check=False)
    assert ping.returncode == 0, ping.stdout
    assert '"prefix_changes": 1' in node.log_tail(200)  # by difference: the one prefix gone


def signal_kill() -> int:
    import signal

    return int(signal.SIGKILL)


def test_icmp_flows_while_udp_is_filtered(outside: Outside, inproc: InProcess) -> None:
    inproc.filters(udp={"rules": [{"name": "all", "action": "Drop", "udp": {}}]})
    ping = netns.exec_in(outside.world, ["ping", "-c", "3", "-i", "0.2", "-W", "1", NODE_UPLINK], check=False)
    assert ping.returncode == 0
    frames = [bytes(Ether(src=outside.world_mac, dst=outside.node_mac) / IP(src=WORLD_IP, dst=NODE_UPLINK)
                    / ICMP())]
    outside.send_all(frames, 10, 0)
    assert inproc.counted("udp.all") == (0, 0)
