"""Overlay, pure parts: which ipcache entries name a tunnel endpoint, and the pod MTU."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.agent.identity_book import IdentityBook
from membrane.agent.overlay import VXLAN_OVERHEAD, pod_mtu
from membrane.agent.policy_syncing import LocalEndpoint, PolicyManager
from membrane.delta import Delta
from membrane.identities import ReservedIdentity
from membrane.k8s_models import ObjectRef, Pod, parse_object

OWN_IP = "192.0.2.1"
REMOTE_NODE = int(ReservedIdentity.REMOTE_NODE)


class Maps:
    def __init__(self) -> None:
        self.ipcache: dict[IPv4Network, object] = {}

    def read_policy(self) -> dict:  # type: ignore[type-arg]
        return {}

    def write_policy(self, delta: Delta) -> None:  # type: ignore[type-arg]
        pass

    def read_ipcache(self) -> dict[IPv4Network, object]:
        return dict(self.ipcache)

    def write_ipcache(self, delta: Delta) -> None:  # type: ignore[type-arg]
        self.ipcache.update(delta.upserts)
        for key in delta.deletes:
            del self.ipcache[key]

    def read_cidrs(self) -> dict[IPv4Network, int]:
        return {}

    def write_cidrs(self, delta: Delta) -> None:  # type: ignore[type-arg]
        pass


def pod(name: str, ip: str, node: str | None = None, host_ip: str | None = None) -> Pod:
    obj = parse_object({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
                        "spec": {"nodeName": node, "containers": []},
                        "status": {"podIP": ip, "hostIP": host_ip}})
    assert isinstance(obj, Pod)
    return obj


def manager(tmp_path: Path) -> tuple[PolicyManager, Maps]:
    maps = Maps()
    pm = PolicyManager(IdentityBook(tmp_path / "ids.json"), maps, lambda key, identity: None, lambda: [OWN_IP],
                       node_name="n1")
    return pm, maps


def net(ip: str) -> IPv4Network:
    return IPv4Network(f"{ip}/32")


def test_standalone_remote_pods_tunnel_to_their_host_ip(tmp_path: Path) -> None:
    pm, maps = manager(tmp_path)
    pm.on_pod(ObjectRef("shop", "far"), pod("far", "10.1.2.5", node="n2", host_ip="192.0.2.2"))
    pm.on_pod(ObjectRef("shop", "near"), pod("near", "10.1.1.5", node="n1", host_ip=OWN_IP))
    pm.on_pod(ObjectRef("shop", "nowhere"), pod("nowhere", "10.1.9.5"))  # no node known: not tunnelled
    pm.on_endpoint(ObjectRef("shop", "here"), LocalEndpoint("c/eth0", 7, IPv4Address("10.1.1.6")))
    pm.apply()
    far = maps.ipcache[net("10.1.2.5")]
    assert isinstance(far, IpcacheEntry) and far.tunnel_endpoint == IPv4Address("192.0.2.2")
    assert far.identity == pm.identities.identity_of(ObjectRef("shop", "far"))
    assert isinstance(maps.ipcache[net("10.1.1.5")], int)
    assert isinstance(maps.ipcache[net("10.1.9.5")], int)
    assert isinstance(maps.ipcache[net("10.1.1.6")], int)
    assert maps.ipcache[net("192.0.2.2")] == REMOTE_NODE
    assert maps.ipcache[net(OWN_IP)] == int(ReservedIdentity.HOST)


def test_kubernetes_nodes_give_the_tunnel_endpoint_and_moves_are_rewritten(tmp_path: Path) -> None:
    pm, maps = manager(tmp_path)
    pm.on_node("n2", ["192.0.2.2"])
    pm.on_node("n3", ["fd00::3", "192.0.2.3"])  # first IPv4 address
    ref = ObjectRef("shop", "far")
    pm.on_pod(ref, pod("far", "10.1.2.5", node="n2"))
    pm.apply()
    assert maps.ipcache[net("10.1.2.5")].tunnel_endpoint == IPv4Address("192.0.2.2")  # type: ignore[union-attr]
    assert maps.ipcache[net("192.0.2.3")] == REMOTE_NODE
    pm.on_pod(ref, pod("far", "10.1.2.5", node="n3"))
    pm.on_node("n2", [])  # node gone
    pm.apply()
    assert maps.ipcache[net("10.1.2.5")].tunnel_endpoint == IPv4Address("192.0.2.3")  # type: ignore[union-attr]
    assert net("192.0.2.2") not in maps.ipcache


def test_pod_mtu_leaves_room_for_the_vxlan_headers() -> None:
    assert VXLAN_OVERHEAD == 50
    assert pod_mtu(None, 1500, tunnel=True) == 1450
    assert pod_mtu(None, 9000, tunnel=True) == 8950
    assert pod_mtu(None, 1500, tunnel=False) == 1500
    assert pod_mtu(1400, 1500, tunnel=True) == 1400  # configured wins
