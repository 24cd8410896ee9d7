"""The policy manager's incremental ipcache against the from-scratch oracle (membrane.ipcache).

Random changes of every input the ipcache depends on (pods here and elsewhere, local
endpoints, stale pod objects claiming a local endpoint's address, host-network pods, nodes
and their pod CIDRs, this node's own addresses, ipBlock prefixes), applied in random batches:
after every apply the map the manager wrote equals `desired_ipcache` of the same inputs.
"""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from membrane.agent.datapath.layout import IpcacheFlag
from membrane.agent.policy_syncing import LocalEndpoint, PolicyManager
from membrane.identities import ReservedIdentity
from membrane.ipcache import IPCACHE_FLAG_NODE, NODE_ENTRY, IpcacheEntry, IpcacheInputs, IpcachePod, desired_ipcache
from membrane.k8s_models import ObjectRef, parse_object
from membrane_testkit.fake_maps import FakePolicyMaps
from membrane_testkit.label_identities import LabelIdentities

NODES = ["n1", "n2", "n3", "n4"]  # n1 is this node
HOST_CHOICES = [["192.0.2.1"], ["192.0.2.1", "198.18.0.1"], ["192.0.2.1", "192.0.2.3"]]


def pod(name: str, ip: str, node: str | None, host_ip: str | None, app: str, host_network: bool) -> object:
    return parse_object({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
                         "spec": {"nodeName": node, "hostNetwork": host_network, "containers": []},
                         "status": {"podIP": ip, "hostIP": host_ip}})


def blocks(cidr: str, *excepts: str) -> object:
    return parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": "blocks", "namespace": "shop"},
                         "spec": {"podSelector": {},
                                  "ingress": [{"from": [{"ipBlock": {"cidr": cidr, "except": list(excepts)}}]}]}})


def test_the_oracle_ranks_host_over_nodes_over_pods_over_prefixes() -> None:
    assert int(IpcacheFlag.NODE) == IPCACHE_FLAG_NODE  # the same bit as the datapath's
    inputs = IpcacheInputs(
        own_addresses={"192.0.2.1"}, remote_nodes={IPv4Address("192.0.2.2")},
        pod_cidrs={IPv4Network("10.2.0.0/24"): IPv4Address("192.0.2.2")},
        cidr_identities={IPv4Network("10.0.0.0/8"): 1 << 24 | 1, IPv4Network("10.2.0.0/25"): 1 << 24 | 2},
        pods=[IpcachePod(1000, ["10.2.0.5"], tunnel_endpoint=IPv4Address("192.0.2.2")),
              IpcachePod(1001, ["10.1.0.5"]), IpcachePod(1002, ["10.1.0.5"], local=True),
              IpcachePod(1003, ["192.0.2.1"]), IpcachePod(1004, ["10.1.0.9"], host_network=True),
              IpcachePod(1005, ["10.3.0.1"], tunnel_endpoint=IPv4Address("192.0.2.1"))])
    assert desired_ipcache(inputs) == {
        IPv4Network("192.0.2.1/32"): int(ReservedIdentity.HOST),
        IPv4Network("192.0.2.2/32"): NODE_ENTRY,
        IPv4Network("10.2.0.0/24"): IpcacheEntry(1 << 24 | 1, IPv4Address("192.0.2.2")),  # covered by the /8
        IPv4Network("10.2.0.0/25"): IpcacheEntry(1 << 24 | 2, IPv4Address("192.0.2.2")),  # inside its pod CIDR
        IPv4Network("10.0.0.0/8"): 1 << 24 | 1,
        IPv4Network("10.2.0.5/32"): IpcacheEntry(1000, IPv4Address("192.0.2.2")),
        IPv4Network("10.1.0.5/32"): 1002,  # the local endpoint's claim beats a stale pod object
        IPv4Network("10.3.0.1/32"): 1005,  # "another node" at our own address: here
    }


@pytest.mark.parametrize("seed", range(4))
def test_incremental_ipcache_equals_the_oracle_on_random_changes(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    maps = FakePolicyMaps()
    host = list(HOST_CHOICES[0])
    mgr = PolicyManager(LabelIdentities(), maps, lambda _k, _i: None, lambda: list(host),
                        node_name="n1")
    locals_: dict[ObjectRef, IPv4Address] = {}
    applies = 0
    for step in range(400):
        what = rng.random()
        if what < 0.35:  # a pod, here or elsewhere (one address per name; locals may collide below)
            index = rng.randrange(12)
            ref = ObjectRef("shop", f"p{index}")
            node = rng.choice([*NODES, None])
            obj = pod(ref.name, f"10.{rng.choice([1, 2])}.{rng.randrange(2)}.{index + 1}", node,
                      rng.choice([None, f"192.0.2.{NODES.index(node) + 1}" if node else None, "192.0.2.9"]),
                      rng.choice(["a", "b", "c"]), rng.random() < 0.1)
            mgr.on_pod(ref, obj if rng.random() < 0.85 else None)  # type: ignore[arg-type]
        elif what < 0.5:  # a local endpoint comes or goes (its address may be a stale pod object's)
            ref = ObjectRef("shop", f"p{rng.randrange(12)}")
            if ref in locals_ and rng.random() < 0.5:
                del locals_[ref]
                mgr.on_endpoint(ref, None)
            else:
                ip = IPv4Address(f"10.1.0.{rng.randrange(1, 13)}")
                if ip in {v for r, v in locals_.items() if r != ref}:
                    continue  # two local endpoints never share an address (IPAM)
                locals_[ref] = ip
                mgr.on_endpoint(ref, LocalEndpoint(f"c-{ref.name}/eth0", 10 + int(ref.name[1:]), ip))
        elif what < 0.7:  # a node comes, moves, goes, gets a pod CIDR
            name = rng.choice(NODES[1:])
            mgr.on_node(name, [f"192.0.2.{rng.randint(2, 5)}"] if rng.random() < 0.8 else [],
                        rng.choice([None, f"10.2.{rng.randrange(2)}.0/24", f"10.2.{rng.randrange(2)}.0/25"]))
        elif what < 0.78:  # this node's addresses change
            host[:] = rng.choice(HOST_CHOICES)
        else:  # ipBlock prefixes come, go and move
            third = rng.randrange(2)
            cidr = rng.choice(["10.0.0.0/8", "10.2.0.0/16", f"10.2.{third}.0/24"])
            mgr.on_policy(ObjectRef("shop", "blocks"),  # type: ignore[arg-type]
                          blocks(cidr, f"10.2.{third}.128/25") if rng.random() < 0.8 else None)
        if rng.random() < 0.3:
            mgr.apply()
            applies += 1
            assert maps.ipcache == desired_ipcache(mgr.ipcache_inputs()), step
            for ref, ip in locals_.items():  # a local endpoint's address carries its own identity
                if ref in mgr.pods and mgr.pods[ref].host_network:
                    continue  # (a host-network pod object: no address of its own)
                assert maps.ipcache.get(IPv4Network(f"{ip}/32")) == mgr.identities.identity_of(ref) or \
                    str(ip) in host, (step, ref)
        if rng.random() < 0.03:  # drift behind the manager's back, then a resync
            maps.ipcache.pop(next(iter(maps.ipcache), IPv4Network("10.9.9.9/32")), None)
            maps.ipcache[IPv4Network("10.9.0.0/16")] = 4242
            mgr.resync()
            assert maps.ipcache == desired_ipcache(mgr.ipcache_inputs()), step
    mgr.apply()
    assert maps.ipcache == desired_ipcache(mgr.ipcache_inputs())
    assert applies > 50
