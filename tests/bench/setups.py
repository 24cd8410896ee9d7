"""The three same-node pod-to-pod topologies compared by the benchmark.

Each setup owns only network namespaces named `mbbench-...`; `destroy()` removes everything it
made, whatever state it is in. Traffic always runs from `client` to `server`, two addresses
inside the setup's own namespaces.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, tool

from . import plugins
from .plugins import CniPlugin

PREFIX = "mbbench"


@dataclass(frozen=True)
class Endpoint:
    """A pod as the traffic tools see it: the namespace to run in and its address."""

    netns: str
    ip: str


class Setup(ABC):
    """A topology with two pods, `client` and `server`."""

    name: str
    description: str
    client: Endpoint
    server: Endpoint

    @abstractmethod
    def create(self) -> None:
        """Build the topology; on failure, the caller still calls `destroy()`."""

    @abstractmethod
    def destroy(self) -> None:
        """Remove everything this setup created; safe to call twice or after a failed create."""


class DirectVeth(Setup):
    """One veth pair straight between two pod namespaces: the floor on this machine."""

    name = "direct veth"
    description = "veth pair between two pod netns, no node in between"

    def __init__(self, subnet: str = "10.202.0") -> None:
        self.a, self.b = f"{PREFIX}-veth-a", f"{PREFIX}-veth-b"
        self.client, self.server = Endpoint(self.a, f"{subnet}.1"), Endpoint(self.b, f"{subnet}.2")

    def create(self) -> None:
        netns.create(self.a)
        netns.create(self.b)
        netns.run(["ip", "-n", self.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
                   "netns", self.b])
        for ep in (self.client, self.server):
            netns.run(["ip", "-n", ep.netns, "addr", "add", f"{ep.ip}/24", "dev", "eth0"])
            netns.run(["ip", "-n", ep.netns, "link", "set", "eth0", "up"])

    def destroy(self) -> None:
        netns.delete(self.a)
        netns.delete(self.b)


class BridgeReference(Setup):
    """The reference CNI plugins (Debian containernetworking-plugins): bridge + host-local.

    The plugin runs inside the node namespace (`ip netns exec`), so the Linux bridge and the
    host-side veths are created there and never on the machine.
    """

    name = "bridge reference"
    description = "/usr/lib/cni/bridge + host-local, Linux bridge mbbr0 in a node netns"
    plugin_dir = "/usr/lib/cni"

    def __init__(self, subnet: str = "10.201.0.0/24") -> None:
        self.node = f"{PREFIX}-ref-node"
        self.data_dir = Path(tempfile.mkdtemp(prefix="mbbench-hostlocal-"))
        self.plugin = CniPlugin(
            name="bridge", argv=("ip", "netns", "exec", self.node, f"{self.plugin_dir}/bridge"),
            conf={"cniVersion": "1.0.0", "name": "mbbench-ref", "type": "bridge", "bridge": "mbbr0",
                  "isGateway": True, "ipMasq": False,
                  "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(self.data_dir),
                           "routes": [{"dst": "0.0.0.0/0"}]}},
            cni_path=self.plugin_dir, netns_prefix=f"{PREFIX}-ref-pod-")
        self.pods: dict[str, str] = {}  # pod name -> netns name

    def add_pod(self, pod: str) -> tuple[Endpoint, plugins.PluginCall]:
        """Create a pod namespace and CNI ADD it (the way kubelet would, after the runtime made the netns)."""
        ns = self.plugin.netns_prefix + pod
        path = netns.create(ns)
        self.pods[pod] = ns
        run = plugins.call(self.plugin, "ADD", self.container_id(pod), str(path), args=plugins.k8s_args(pod))
        result = run.result
        if run.code != 0 or result is None:
            raise RuntimeError(f"bridge ADD {pod} failed ({run.code}): {run.stdout}")
        return Endpoint(ns, str(result["ips"][0]["address"]).split("/")[0]), run

    def container_id(self, pod: str) -> str:
        return f"mbbench-ref-{pod}"

    def del_pod(self, pod: str) -> plugins.PluginCall:
        ns = self.pods.pop(pod)
        run = plugins.call(self.plugin, "DEL", self.container_id(pod), str(netns.NETNS_DIR / ns),
                           args=plugins.k8s_args(pod))
        netns.delete(ns)
        return run

    def create(self) -> None:
        netns.create(self.node)
        self.client, _ = self.add_pod("client")
        self.server, _ = self.add_pod("server")

    def destroy(self) -> None:
        for pod in list(self.pods):
            try:
                self.del_pod(pod)
            except Exception:  # noqa: BLE001 - cleanup goes on regardless
                netns.delete(self.pods.pop(pod, ""))
        for leftover in netns.listed(self.plugin.netns_prefix):
            netns.delete(leftover)
        netns.delete(self.node)  # takes mbbr0 and every host-side veth with it
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Membrane(Setup):
    """A lab node running the real membrane-agent, pods added through the real membrane-cni."""

    name = "membrane"
    description = "membrane-agent in a node netns, pods via membrane-cni (eBPF redirect_peer)"

    def __init__(self, pod_cidr: str = "10.210.0.0/24", settle_seconds: float = 2.0) -> None:
        self.node = LabNode("mb", pod_cidr=pod_cidr, prefix=PREFIX)
        self.settle_seconds = settle_seconds
        self.idle_rss_kib: int | None = None
        self.ready_seconds: float | None = None
        self.plugin = CniPlugin(name="membrane-cni", argv=(tool("membrane-cni"),), conf=self.node.net_conf(),
                                cni_path="/opt/cni/bin", netns_prefix=f"{self.node.netns}-")

    @property
    def agent_pid(self) -> int:
        if self.node.process is None or self.node.process.poll() is not None:
            raise RuntimeError("membrane agent is not running")
        return self.node.process.pid  # `ip netns exec` execs, so this is the agent itself

    def create(self) -> None:
        self.node.create()
        start = time.perf_counter()
        self.node.start_agent()
        self.ready_seconds = time.perf_counter() - start  # exec to ready: compile, load, attach, restore
        time.sleep(self.settle_seconds)
        self.idle_rss_kib = rss_kib(self.agent_pid)
        client, server = self.node.add_pod("client"), self.node.add_pod("server")
        self.client, self.server = Endpoint(client.netns, client.ip), Endpoint(server.netns, server.ip)

    def node_forwarded(self) -> int:
        """Packets the node's IP stack has forwarded (Ip ForwDatagrams): pod-to-pod traffic on the
        eBPF redirect_peer path never reaches it."""
        lines = netns.exec_in(self.node.netns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
        head, values = [line.split() for line in lines if line.startswith("Ip:")][:2]
        return int(values[head.index("ForwDatagrams")])

    def destroy(self) -> None:
        self.node.destroy()  # CNI DELs its pods, stops the agent, removes mbbench-mb* netns and pins


def rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
