"""The node's own addresses as the raw rtnetlink dump reads them (agent/rtnl.py) equal what
pyroute2 (and `ip`) report, in a namespace with more addresses than one receive holds.

Policy and LB applies read them at every apply (CNI ADD, apply --wait); the raw dump replaced
pyroute2's there, so the two must agree: loopback left out, point-to-point addresses by their
IFA_ADDRESS (the peer, as before), duplicates kept, other families ignored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from membrane_testkit.lab import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

PROBE = """
import json
from pyroute2 import IPRoute
from membrane.agent.netlinking import Netlink
from membrane.agent.rtnl import SocketPool
nl = Netlink()
pool = SocketPool()
try:
    raw = nl.host_addresses()
    again = nl.host_addresses()  # the pooled socket is reused: nothing of the first dump is left on it
    with IPRoute() as ipr:
        old = sorted(a for a in (str(x.get("IFA_ADDRESS")) for x in ipr.get_addr(family=2))
                     if not a.startswith("127."))
    print(json.dumps({"raw": raw, "again": again, "old": old}))
finally:
    nl.close()
    pool.close()
"""


@pytest.fixture
def space() -> Iterator[str]:
    name = f"mbt-addr{os.getpid()}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


def test_raw_address_dump_matches_pyroute2_with_many_addresses(space: str) -> None:
    ip = ["ip", "-n", space]
    netns.run([*ip, "link", "add", "d0", "type", "veth", "peer", "name", "d1"])
    batch = [f"address add 10.77.{i // 200}.{i % 200 + 1}/16 dev d0" for i in range(400)]  # many pages
    batch += ["address add 10.77.0.1/32 dev d1",  # the same address on a second link: kept twice
              "address add 172.31.0.1 peer 172.31.0.2 dev d1",  # point to point: IFA_ADDRESS is the peer
              "address add 127.0.0.9/8 dev d1",  # loopback range: never a host identity address
              "address add fd00::1/64 dev d1"]  # another family: not asked for
    subprocess.run([*ip, "-batch", "-"], input="\n".join(batch) + "\n", text=True, check=True, timeout=60)
    done = netns.exec_in(space, [sys.executable, "-c", PROBE])
    got = json.loads(done.stdout)
    assert got["raw"] == got["old"]
    assert got["again"] == got["raw"]
    assert len(got["raw"]) == 402
    assert got["raw"].count("10.77.0.1") == 2
    assert "172.31.0.2" in got["raw"] and "172.31.0.1" not in got["raw"]
    assert not [a for a in got["raw"] if a.startswith("127.") or ":" in a]
