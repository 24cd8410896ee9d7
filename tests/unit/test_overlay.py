"""Overlay, pure parts: which ipcache entries name a tunnel endpoint, and the pod MTU."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.agent.overlay import VXLAN_OVERHEAD, pod_mtu
from membrane.agent.policy_syncing import NODE_ENTRY, LocalEndpoint, PolicyManager
from membrane.identities import ReservedIdentity
from membrane.k8s_models import ObjectRef, Pod, parse_object
from membrane_testkit.label_identities import LabelIdentities

OWN_IP = "192.0.2.1"


class Maps:
    def __init__(self) -> None:
        self.ipcache: dict[IPv4Network, object] = {}

    def capacity(self, role: str) -> int | None:
        return None

    def bump_policy_revision(self) -> int:
        return 1

    def read_map(self, role: str) -> dict:  # type: ignore[type-arg]
        return dict(self.ipcache) if role == "ipcache" else {}

    def update_map(self, role: str, entries: dict) -> None:  # type: ignore[type-arg]
        if role == "ipcache":
            self.ipcache.update(entries)

    def delete_map(self, role: str, keys: list) -> int:  # type: ignore[type-arg]
        if role != "ipcache":
            return 0
        for key in keys:
            del self.ipcache[key]
        return len(keys)


def pod(name: str, ip: str, node: str | None = None, host_ip: str | None = None) -> Pod:
    obj = parse_object({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
                        "spec": {"nodeName": node, "containers": []},
                        "status": {"podIP": ip, "hostIP": host_ip}})
    assert isinstance(obj, Pod)
    return obj


def manager(tmp_path: Path) -> tuple[PolicyManager, Maps]:
    maps = Maps()
    pm = PolicyManager(LabelIdentities(), maps, lambda key, identity: None, lambda: [OWN_IP],
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
    assert maps.ipcache[net("192.0.2.2")] == NODE_ENTRY  # a pod's hostIP is a node: VXLAN accepted from it
    assert maps.ipcache[net(OWN_IP)] == int(ReservedIdentity.HOST)


def test_kubernetes_nodes_give_the_tunnel_endpoint_and_moves_are_rewritten(tmp_path: Path) -> None:
    pm, maps = manager(tmp_path)
    pm.on_node("n2", ["192.0.2.2"])
    pm.on_node("n3", ["fd00::3", "192.0.2.3"])  # first IPv4 address
    ref = ObjectRef("shop", "far")
    pm.on_pod(ref, pod("far", "10.1.2.5", node="n2"))
    pm.apply()
    assert maps.ipcache[net("10.1.2.5")].tunnel_endpoint == IPv4Address("192.0.2.2")  # type: ignore[union-attr]
    assert maps.ipcache[net("192.0.2.3")] == NODE_ENTRY
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


# -- what the overlay's trust rules read: node flags and who owns which address -------------


def policy_with_block(cidr: str, *excepts: str) -> object:
    return parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": "blocks", "namespace": "shop"},
                         "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                                  "ingress": [{"from": [{"ipBlock": {"cidr": cidr, "except": list(excepts)}}]}]}})


def test_nodes_are_flagged_and_their_pod_cidrs_name_them(tmp_path: Path) -> None:
    pm, maps = manager(tmp_path)
    pm.on_node("n1", [OWN_IP], "10.1.1.0/24")  # this node: neither a peer nor a remote pod CIDR
    pm.on_node("n2", ["192.0.2.2"], "10.1.2.0/24")
    pm.apply()
    assert maps.ipcache[net("192.0.2.2")] == NODE_ENTRY
    assert NODE_ENTRY.flags == 1 and NODE_ENTRY.identity == int(ReservedIdentity.REMOTE_NODE)
    assert maps.ipcache[IPv4Network("10.1.2.0/24")] == IpcacheEntry(int(ReservedIdentity.WORLD), IPv4Address("192.0.2.2"))
    assert IPv4Network("10.1.1.0/24") not in maps.ipcache
    assert maps.ipcache[net(OWN_IP)] == int(ReservedIdentity.HOST)  # never flagged: we never receive from ourselves
    pm.on_node("n2", ["192.0.2.2"], "10.1.12.0/24")  # PodCIDR moved
    pm.apply()
    assert IPv4Network("10.1.2.0/24") not in maps.ipcache
    assert maps.ipcache[IPv4Network("10.1.12.0/24")].tunnel_endpoint == IPv4Address("192.0.2.2")  # type: ignore[union-attr]
    pm.on_node("n2", [])  # node gone: no peer, no pod CIDR
    pm.apply()
    assert net("192.0.2.2") not in maps.ipcache and IPv4Network("10.1.12.0/24") not in maps.ipcache
    assert maps.ipcache == pm.desired_ipcache()


def test_ip_blocks_keep_their_identity_and_learn_their_owner(tmp_path: Path) -> None:
    """A pod CIDR's entry answers as a miss would (the covering ipBlock's identity, else WORLD);
    an ipBlock prefix inside a node's pod CIDR is that node's too."""
    pm, maps = manager(tmp_path)
    pm.on_node("n2", ["192.0.2.2"], "10.1.2.0/24")
    pm.on_policy(ObjectRef("shop", "blocks"), policy_with_block("10.1.0.0/16", "10.1.2.128/25"))  # type: ignore[arg-type]
    pm.apply()
    wide = pm.resolver.cidrs.identity_of(IPv4Network("10.1.0.0/16"))
    narrow = pm.resolver.cidrs.identity_of(IPv4Network("10.1.2.128/25"))
    assert wide and narrow
    assert maps.ipcache[IPv4Network("10.1.0.0/16")] == wide  # spans nodes: nobody's
    assert maps.ipcache[IPv4Network("10.1.2.0/24")] == IpcacheEntry(wide, IPv4Address("192.0.2.2"))
    assert maps.ipcache[IPv4Network("10.1.2.128/25")] == IpcacheEntry(narrow, IPv4Address("192.0.2.2"))
    pm.on_policy(ObjectRef("shop", "blocks"), None)
    pm.apply()
    assert maps.ipcache[IPv4Network("10.1.2.0/24")] == IpcacheEntry(int(ReservedIdentity.WORLD), IPv4Address("192.0.2.2"))
    assert IPv4Network("10.1.2.128/25") not in maps.ipcache
    assert maps.ipcache == pm.desired_ipcache()


def test_incremental_ipcache_equals_the_oracle_through_node_changes(tmp_path: Path) -> None:
    import random

    rng = random.Random(9)
    pm, maps = manager(tmp_path)
    nodes = [f"n{i}" for i in range(2, 6)]
    for step in range(300):
        what = rng.random()
        if what < 0.3:
            node = rng.choice(nodes)
            pm.on_node(node, [f"192.0.2.{rng.randint(2, 5)}"] if rng.random() < 0.8 else [],
                       rng.choice([None, f"10.1.{rng.randint(2, 5)}.0/24", f"10.1.{rng.randint(2, 5)}.0/25"]))
        elif what < 0.7:
            index = rng.randint(0, 15)
            name = f"p{index}"  # one address per pod name (duplicates are another test's business)
            pm.on_pod(ObjectRef("shop", name), pod(name, f"10.1.{rng.randint(2, 5)}.{index + 1}",
                                                   node=rng.choice(nodes)) if rng.random() < 0.85 else None)
        else:
            third = rng.randint(2, 5)
            cidr = rng.choice(["10.1.0.0/16", f"10.1.{third & ~1}.0/23", f"10.1.{third}.0/24"])
            pm.on_policy(ObjectRef("shop", "blocks"), policy_with_block(  # type: ignore[arg-type]
                cidr, f"10.1.{third}.128/25") if rng.random() < 0.8 else None)
        if rng.random() < 0.4:
            pm.apply()
            assert maps.ipcache == pm.desired_ipcache(), step
            assert_every_tunnel_endpoint_is_a_node(maps.ipcache)
    pm.apply()
    assert maps.ipcache == pm.desired_ipcache()
    assert_every_tunnel_endpoint_is_a_node(maps.ipcache)


def assert_every_tunnel_endpoint_is_a_node(cache: dict[IPv4Network, object]) -> None:
    """from_overlay relies on it: an address owned by a tunnel endpoint is accepted from that
    endpoint without looking the endpoint itself up (bpf/lib/overlay.h, mb_overlay_trust)."""
    endpoints = {e.tunnel_endpoint for e in cache.values() if isinstance(e, IpcacheEntry) and e.tunnel_endpoint}
    assert {ip for ip in endpoints if cache.get(net(str(ip))) != NODE_ENTRY} == set(), cache


def test_a_tunnel_endpoint_is_always_a_node_even_without_a_node_object(tmp_path: Path) -> None:
    pm, maps = manager(tmp_path)
    pm.on_pod(ObjectRef("shop", "far"), pod("far", "10.1.2.5", node="n9", host_ip="192.0.2.9"))  # standalone
    pm.on_node("n2", ["192.0.2.2"], "10.1.2.0/24")
    pm.apply()
    assert maps.ipcache[net("192.0.2.9")] == NODE_ENTRY
    assert_every_tunnel_endpoint_is_a_node(maps.ipcache)


# -- wiring the device: the port reaches the datapath, the program comes last ------------------


class FakeNetlink:
    def __init__(self, addresses: tuple[str, ...] = ("192.0.2.1",)) -> None:
        self.calls: list[tuple[str, object]] = []
        self.addresses = list(addresses)

    def host_addresses(self) -> list[str]:
        return self.addresses

    def underlay(self, node_ip: IPv4Address | None) -> tuple[IPv4Address | None, int | None]:
        return node_ip or IPv4Address("192.0.2.1"), 1500

    def ensure_vxlan(self, name: str, port: int, mtu: int) -> int:
        self.calls.append(("vxlan", (name, port, mtu)))
        return 42

    def attach_ingress(self, ifindex: int, program: tuple[int, str]) -> None:
        self.calls.append(("attach", (ifindex, program[1])))

    def attach_egress(self, ifindex: int, program: tuple[int, str]) -> None:
        self.calls.append(("attach-egress", (ifindex, program[1])))

    def route_to_tunnel(self, ifindex: int, cidr: object, source: object) -> None:
        self.calls.append(("route", (ifindex, str(cidr), str(source))))


class FakeDatapath:
    def __init__(self, calls: list[tuple[str, object]]) -> None:
        self.calls = calls

    def program(self, name: str) -> tuple[int, str]:
        return 7, name

    def set_node_config(self, config: object) -> None:
        self.calls.append(("config", config))


def test_plan_touches_nothing_and_setup_writes_the_port_before_attaching(tmp_path: Path) -> None:
    from membrane.agent import overlay
    from membrane.agent.config import AgentConfig
    from membrane.agent.datapath.node_config import NodeConfig

    config = AgentConfig(node_name="n1", tunnel_port=4789, state_dir=tmp_path)
    netlink = FakeNetlink()
    planned = overlay.plan(config, netlink)
    assert netlink.calls == [] and planned.pod_mtu == 1450 and planned.ifindex == 0
    ready = overlay.setup(config, planned, netlink, FakeDatapath(netlink.calls))
    assert ready.ifindex == 42
    assert netlink.calls == [("vxlan", (config.tunnel_device, 4789, 1450)),
                             ("config", NodeConfig(42, IPv4Address("192.0.2.1"), 4789)),
                             ("attach", (42, "from_overlay")), ("attach-egress", (42, "to_overlay"))]


def test_the_stack_routes_the_cluster_cidr_into_the_tunnel(tmp_path: Path) -> None:
    """Only a cluster CIDR larger than the node's pod CIDR: the stack's route for other nodes' pods."""
    from membrane.agent import overlay
    from membrane.agent.config import AgentConfig

    config = AgentConfig(node_name="n1", pod_cidr="10.200.1.0/24", cluster_cidr="10.200.0.0/16", state_dir=tmp_path)
    netlink = FakeNetlink()
    overlay.setup(config, overlay.plan(config, netlink), netlink, FakeDatapath(netlink.calls))
    assert netlink.calls[-1] == ("route", (42, "10.200.0.0/16", "192.0.2.1"))
    # A node IP the node does not hold (yet) is no preferred source: the kernel would refuse it.
    absent = FakeNetlink(addresses=("198.51.100.9",))
    overlay.setup(config, overlay.plan(config, absent), absent, FakeDatapath(absent.calls))
    assert absent.calls[-1] == ("route", (42, "10.200.0.0/16", "None"))
    alone = AgentConfig(node_name="n1", pod_cidr="10.200.1.0/24", state_dir=tmp_path)  # cluster CIDR = pod CIDR
    netlink = FakeNetlink()
    overlay.setup(alone, overlay.plan(alone, netlink), netlink, FakeDatapath(netlink.calls))
    assert not [c for c in netlink.calls if c[0] == "route"]


def test_no_tunnel_means_no_port_and_no_device(tmp_path: Path) -> None:
    from membrane.agent import overlay
    from membrane.agent.config import AgentConfig
    from membrane.agent.datapath.node_config import NodeConfig

    config = AgentConfig(node_name="n1", tunnel="disabled", state_dir=tmp_path)
    netlink = FakeNetlink()
    ready = overlay.setup(config, overlay.plan(config, netlink), netlink, FakeDatapath(netlink.calls))
    assert netlink.calls == [("config", NodeConfig(0, IPv4Address("192.0.2.1")))] and ready.pod_mtu == 1500
