"""membrane in a chain run by the reference CNI library (libcni, as container runtimes use it)
with the reference plugins portmap, tuning and bandwidth (/usr/lib/cni): VERSION validation,
ADD, CHECK and DEL, each plugin's work checked in the namespaces (a host port that reaches the
pod, a sysctl, the pod's bandwidth shapers). The client runs inside the node namespace, so
portmap's iptables rules land there and nowhere else."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from membrane_testkit.lab import libcni, netns
from membrane_testkit.lab.node import LabNode, tool
from membrane_testkit.lab.probes import NODE_UPLINK
from membrane_testkit.lab.traffic import CONNECT, OK_SERVER

HOST_PORT = 18080
LIMITS = {"ingressRate": 20_000_000, "ingressBurst": 256_000, "egressRate": 10_000_000, "egressBurst": 256_000}
# The reference bandwidth plugin with a static ingress limit and no capability: a TBF on the
# host veth's root (next to membrane's clsact; it shapes what the host stack sends the pod).
# Without any limit Debian's bandwidth (1.1.1) crashes on CHECK (upstream
# containernetworking/plugins#1221, fixed in 1.9.1).
BANDWIDTH = {"type": "bandwidth", "ingressRate": 100_000_000, "ingressBurst": 1_000_000}


@pytest.fixture(scope="module")
def client() -> Path:
    return libcni.client()


@pytest.fixture
def chain(node: LabNode, tmp_path: Path) -> Iterator[Any]:
    """Writes a conflist and returns a runner: run(command, pod, capability_args, plugins=...)."""
    bins = tmp_path / "bin"
    bins.mkdir()
    (bins / "membrane-cni").symlink_to(tool("membrane-cni"))
    # The plugins' PATH holds iptables but no ip6tables: Debian's portmap (1.1.1) CHECKs IPv6
    # rules it never made for an IPv4-only pod whenever ip6tables works (upstream
    # containernetworking/plugins#819, fixed later); an IPv4-only node is what membrane is.
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "iptables").symlink_to(shutil.which("iptables") or "/usr/sbin/iptables")
    environ = {"PATH": str(tools), "CNI_PATH": f"{bins}:{libcni.REFERENCE_PLUGINS}",
               "CNI_CACHE_DIR": str(tmp_path / "cache")}

    def run(command: str, pod: str, caps: dict[str, Any] | None = None,
            bandwidth_plugin: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        plugins = [
            {"type": "membrane-cni", "agentSocket": node.socket, "capabilities": {"bandwidth": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "1234"}},
            bandwidth_plugin or BANDWIDTH,
        ]
        conflist = tmp_path / "chain.conflist"
        conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "membrane-chain", "plugins": plugins}))
        path = str(netns.NETNS_DIR / f"{node.netns}-{pod}")
        argv = [str(libcni.CLIENT), command, str(conflist), pod, path, "eth0", json.dumps(caps or {})]
        return netns.exec_in(node.netns, ["env", "-i", *(f"{k}={v}" for k, v in environ.items()), *argv],
                             check=False, timeout=120)

    yield run
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_chain_add_check_del(node: LabNode, world: str, client: Path, chain: Any) -> None:
    assert "portMappings" in chain("VALIDATE", "x").stdout  # every plugin answered VERSION
    netns.create(f"{node.netns}-web")
    caps = {"portMappings": [{"hostPort": HOST_PORT, "containerPort": 80, "protocol": "tcp"}], "bandwidth": LIMITS}
    done = chain("ADD", "web", caps)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    names = [i["name"] for i in result["interfaces"]]
    assert names[0].startswith("mb") and names[1:] == ["eth0", "mb-ifb-eth0"], names
    ip = result["ips"][0]["address"].split("/")[0]

    # tuning wrote its sysctl in the pod; membrane shaped the pod from the bandwidth capability.
    pod = f"{node.netns}-web"
    assert netns.exec_in(pod, ["cat", "/proc/sys/net/core/somaxconn"]).stdout.strip() == "1234"
    qdiscs = netns.exec_in(pod, ["tc", "qdisc", "show"]).stdout
    assert "tbf" in qdiscs and "dev mb-ifb-eth0" in qdiscs and "ingress" in qdiscs, qdiscs
    host = netns.exec_in(node.netns, ["tc", "qdisc", "show", "dev", names[0]]).stdout
    assert "tbf" in host and "clsact" in host, host  # the chained plugin's shaper beside membrane's hook
    # portmap: the world reaches the pod through the node's host port (DNAT in the node netns).
    server = netns.popen_in(pod, [sys.executable, "-c", OK_SERVER, ip], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        reply = netns.exec_in(world, [sys.executable, "-c", CONNECT, NODE_UPLINK, str(HOST_PORT), "5"]).stdout
        assert reply.strip() == "ok", reply
    finally:
        server.kill()
        server.wait(5)

    done = chain("CHECK", "web", caps)
    assert done.returncode == 0, done.stderr
    netns.exec_in(pod, ["tc", "qdisc", "del", "dev", "eth0", "root"])  # membrane's CHECK must notice
    done = chain("CHECK", "web", caps)
    assert done.returncode != 0 and "egress limit" in done.stderr, done.stderr

    done = chain("DEL", "web", caps)
    assert done.returncode == 0, done.stderr
    assert node.api("endpoint.list") == []
    assert "CNI-DN" not in netns.exec_in(node.netns, ["iptables-save", "-t", "nat"]).stdout  # portmap cleaned up
    assert "mb-ifb" not in netns.exec_in(pod, ["ip", "-o", "link"]).stdout
    assert chain("DEL", "web", caps).returncode == 0  # idempotent through the whole chain


def test_reference_bandwidth_plugin_cannot_take_the_ingress_hook(node: LabNode, client: Path, chain: Any) -> None:
    """Why membrane shapes pods itself: given the capability, the reference plugin's egress
    shaper needs an `ingress` qdisc on the host veth, where membrane's clsact is."""
    netns.create(f"{node.netns}-p")
    done = chain("ADD", "p", {"bandwidth": LIMITS},
                 bandwidth_plugin={"type": "bandwidth", "capabilities": {"bandwidth": True}})
    assert done.returncode != 0 and "ingress qdisc" in done.stderr, (done.stdout, done.stderr)
    assert chain("DEL", "p", {"bandwidth": LIMITS}).returncode == 0
    assert node.api("endpoint.list") == []
