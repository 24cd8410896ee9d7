"""The Service socket hooks (bpf/bpf_sock.c) on real sockets: maps written by the map manager in
the load balancer's plan order, hooks attached to a lab cgroup, clients run inside it.

One network namespace holds three backends (addresses on lo, each answering with its name) and
the client processes (in a child of the hooks' cgroup). The agent-level tests (pods, policy,
restart, two nodes) are in test_services.py.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from membrane.agent.datapath.cgroup_attaching import SOCK_HOOKS, attach_sock_hooks, attached
from membrane.agent.datapath.layout import LB_AFFINITY, LbClient
from membrane.agent.datapath.loading import Datapath
from membrane.agent.lb_port import LbMapPort
from membrane.agent.map_managing import MapManager
from membrane.lb_maps import LB_ORDER, LB_ROLES, LbIds, desired_contents
from membrane_testkit.lab import cgroups, netns
from membrane_testkit.lab.node import BPFFS_LAB
from membrane_testkit.lb_entries import Back, Entry, Front
from membrane_testkit.waiting import wait_for

PROBE = str(Path(__file__).resolve().parents[2] / "membrane_testkit" / "lab" / "service_probe.py")
VIP = "10.96.0.10"
BACKENDS = {"b1": "10.99.0.1", "b2": "10.99.0.2", "b3": "10.99.0.3"}
_counter = itertools.count()


@dataclass
class SockLab:
    name: str
    dp: Datapath
    cgroup: Path
    client_cgroup: Path
    maps: MapManager
    ids: LbIds = field(default_factory=LbIds)

    def write(self, *entries: Entry) -> None:
        """The maps hold exactly these frontends (differences written in LB_ORDER)."""
        for role, contents in desired_contents(entries, "node", self.ids).items():
            self.maps.replace(role, contents)
        self.maps.apply()

    def client(self, *steps: dict[str, Any], timeout: float = 60) -> list[dict[str, Any]]:
        done = cgroups.run_in(self.client_cgroup, self.name, [sys.executable, "-S", "-u", PROBE, "client",
                                                              json.dumps(list(steps))], timeout=timeout)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)  # type: ignore[no-any-return]


def backends(*names: str, port: int = 8080, **kwargs: Any) -> tuple[Back, ...]:
    return tuple(Back(BACKENDS[n], port, **kwargs) for n in names)


@pytest.fixture(scope="module")
def sock_lab() -> Iterator[SockLab]:
    name = f"mbt-sk{os.getpid() % 10000}x{next(_counter)}"
    servers: list[subprocess.Popen[str]] = []
    netns.create(name)
    cgroup = cgroups.create(name)
    dp = Datapath(BPFFS_LAB / name)
    try:
        for ip in BACKENDS.values():
            netns.run(["ip", "-n", name, "addr", "add", f"{ip}/32", "dev", "lo"])
        client_cgroup = cgroups.child(cgroup, "client")
        dp.load()
        attach_sock_hooks(cgroup, {prog: dp.program_fd(prog) for prog in SOCK_HOOKS})
        for server, ip in BACKENDS.items():
            proc = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-S", "-u", PROBE, "serve",
                                     server, ip, "8080,8081", "5353"], stdout=subprocess.PIPE, text=True)
            servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield SockLab(name, dp, cgroup, client_cgroup, MapManager(LbMapPort(dp), LB_ROLES, order=LB_ORDER))
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        dp.close()
        dp.unpin()
        cgroups.remove(cgroup)
        netns.delete(name)


def test_hooks_attach_replace_and_detach(sock_lab: SockLab) -> None:
    """A second attach replaces our programs in place (a restarted agent), never adds a copy."""
    fds = {prog: sock_lab.dp.program_fd(prog) for prog in SOCK_HOOKS}
    assert set(attach_sock_hooks(sock_lab.cgroup, fds).values()) == {"replaced"}
    fd = os.open(sock_lab.cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert all(len(attached(fd, kind)) == 1 for kind in SOCK_HOOKS.values())
    finally:
        os.close(fd)


def test_tcp_to_cluster_ip_reaches_every_backend_and_peer_shows_the_service(sock_lab: SockLab) -> None:
    sock_lab.write(Entry(Front(VIP, 80), backends("b1", "b2", "b3")))
    before = sock_lab.dp.lb_stats()["translated"]
    results = sock_lab.client(*[{"op": "tcp", "ip": VIP, "port": 80}] * 30)
    assert all("reply" in r for r in results), results
    assert {r["reply"] for r in results} == {"b1:8080", "b2:8080", "b3:8080"}  # random: 3^-29 odds to miss one
    assert all(r["peer"] == [VIP, 80] for r in results)  # getpeername shows the service
    assert sock_lab.dp.lb_stats()["translated"] - before == 30
    # An address that is no frontend (a backend's own) is left alone.
    assert sock_lab.client({"op": "tcp", "ip": BACKENDS["b2"], "port": 8080})[0]["reply"] == "b2:8080"


def test_no_usable_backend_refuses_at_once(sock_lab: SockLab) -> None:
    sock_lab.write(Entry(Front(VIP, 80)), Entry(Front(VIP, 53, "UDP")))
    tcp, udp, sent = sock_lab.client({"op": "tcp", "ip": VIP, "port": 80, "timeout": 5},
                                     {"op": "udp_connected", "ip": VIP, "port": 53, "timeout": 5},
                                     {"op": "udp_sendto", "ip": VIP, "port": 53, "timeout": 5})
    for result in (tcp, udp, sent):
        assert result.get("errno") == errno.ECONNREFUSED, result
        assert result["ms"] < 1000, result  # refused, not a 5 s timeout (measured: well under 1 ms)
    assert sock_lab.dp.lb_stats()["refused"] >= 3


def test_connected_udp_replies_come_from_the_service(sock_lab: SockLab) -> None:
    sock_lab.write(Entry(Front(VIP, 53, "UDP"), backends("b1", "b2", port=5353)))
    (result,) = sock_lab.client({"op": "udp_connected", "ip": VIP, "port": 53, "count": 5})
    assert len(set(result["replies"])) == 1 and result["replies"][0] in ("b1:5353", "b2:5353")  # one socket, one backend
    assert result["sources"] == [[VIP, 53]] * 5  # recvfrom shows the service address
    assert result["peer"] == [VIP, 53]


def test_unconnected_udp_keeps_its_backend_and_moves_when_it_is_removed(sock_lab: SockLab) -> None:
    sock_lab.write(Entry(Front(VIP, 53, "UDP"), backends("b1", "b2", "b3", port=5353)))
    (first,) = sock_lab.client({"op": "udp_sendto", "ip": VIP, "port": 53, "count": 10})
    assert len(set(first["replies"])) == 1, first  # every datagram of the socket: one backend
    assert first["sources"] == [[VIP, 53]] * 10  # recvfrom shows the service address
    # A socket sends for 2 s; its backend is removed from the service meanwhile.
    script = [{"op": "udp_sendto", "ip": VIP, "port": 53, "count": 40, "gap": 0.05}]
    earlier = set(_socket_backends(sock_lab))  # the first socket's entry stays: not the one to follow
    proc = cgroups.popen_in(sock_lab.client_cgroup, sock_lab.name,
                            [sys.executable, "-S", "-u", PROBE, "client", json.dumps(script)],
                            stdout=subprocess.PIPE, text=True)
    try:
        # Its first datagram made its entry (a fixed sleep may end before the client even started).
        wait_for(lambda: set(_socket_backends(sock_lab)) - earlier, timeout=30, message="the new socket's entry")
        (used,) = [ip for key, ip in _socket_backends(sock_lab).items() if key not in earlier]
        survivors = tuple(n for n, ip in BACKENDS.items() if ip != used)
        sock_lab.write(Entry(Front(VIP, 53, "UDP"), backends(*survivors, port=5353)))
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    (moved,) = json.loads(out)
    replies = [r.split(":")[0] for r in moved["replies"]]
    assert len(replies) == 40, moved  # nothing lost
    gone = next(n for n, ip in BACKENDS.items() if ip == used)
    cut = next(i for i, r in enumerate(replies) if r != gone)
    assert cut > 0 and set(replies[:cut]) == {gone} and gone not in replies[cut:], replies
    assert len(set(replies[cut:])) == 1, replies  # and it stays on its new backend


def _socket_backends(lab: SockLab) -> dict[bytes, str]:
    """The backend address each unconnected UDP socket uses, by its SOCKET entry's key in
    mb_lb4_affinity_v1."""
    backends_by_id = lab.dp.read_map("lb_backends")
    return {bytes(key): str(backends_by_id[int(value.backend_id)].address)
            for key, value in lab.dp._table(LB_AFFINITY).items()
            if key.client_kind == LbClient.SOCKET and int(value.backend_id) in backends_by_id}


def test_client_ip_affinity_sticks_until_its_timeout(sock_lab: SockLab) -> None:
    many = tuple(Back(BACKENDS[n], 8080) for n in ("b1", "b2", "b3")) + tuple(
        Back(BACKENDS[n], 8081) for n in ("b1", "b2", "b3"))
    sock_lab.write(Entry(Front(VIP, 80), many, affinity_timeout=1))
    hits = sock_lab.dp.lb_stats()["affinity_hit"]
    sticky = sock_lab.client(*[{"op": "tcp", "ip": VIP, "port": 80}] * 15)
    assert len({r["reply"] for r in sticky}) == 1, sticky  # one client namespace, one backend
    assert sock_lab.dp.lb_stats()["affinity_hit"] - hits == 14
    # Past the timeout the choice is made again: over 5 expiries, staying on one of 6 backends
    # every time has odds of 6^-5.
    steps: list[dict[str, Any]] = []
    for _ in range(5):
        steps += [{"op": "sleep", "seconds": 1.3}, {"op": "tcp", "ip": VIP, "port": 80}]
    again = [r for r in sock_lab.client(*steps, timeout=60) if r]
    assert len(again) == 5 and all("reply" in r for r in again)
    assert len({r["reply"] for r in sticky[:1] + again}) > 1
