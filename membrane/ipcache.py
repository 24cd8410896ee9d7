"""The ipcache the datapath should hold, derived from scratch (pure: no I/O, no kernel types).

The ipcache maps IPv4 prefixes to what the datapath must know about an address: its security
identity, the node hosting it when that is another node (the VXLAN tunnel endpoint), and
flags (NODE: a node's underlay address, the one VXLAN is accepted from). `desired_ipcache` is
the whole content, computed from the inputs alone, with these precedences for one prefix:
this node's addresses (HOST) beat other nodes' addresses (REMOTE_NODE, flagged NODE) beat pod
addresses beat ipBlock prefixes and other nodes' pod CIDRs.

It is the oracle of the policy manager's incremental calculation (agent/policy_syncing.py
re-derives only what changed since the last apply); tests/unit/test_ipcache_oracle.py drives
the manager with random changes and compares what it wrote with this function after each apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Final

from membrane.identities import ReservedIdentity

_U32_MAX: Final = 0xFFFF_FFFF
IPCACHE_FLAG_NODE: Final = 0x1  # MB_IPCACHE_F_NODE (agent/datapath/layout.py IpcacheFlag.NODE)


@dataclass(frozen=True)
class IpcacheEntry:
    identity: int  # u32: cluster identities use 24 bits, node-local CIDR identities bit 24
    tunnel_endpoint: IPv4Address | None = None  # node hosting the prefix (None = this node)
    flags: int = 0  # IPCACHE_FLAG_NODE: a node's underlay address, VXLAN accepted from it

    def __post_init__(self) -> None:
        if not 0 < self.identity <= _U32_MAX:
            raise ValueError(f"identity {self.identity} must be a non-zero u32 (0 is the policy wildcard)")
        if not 0 <= self.flags <= 0xFF:
            raise ValueError(f"flags {self.flags} do not fit in 8 bits")


# An ipcache value: the identity of a prefix of this node (or of the outside), or the full
# entry of a prefix behind another node (identity + tunnel endpoint) or of a node address.
IpcacheTarget = int | IpcacheEntry
# Another node's underlay address: the overlay accepts VXLAN from it (and only from such entries).
NODE_ENTRY: Final = IpcacheEntry(int(ReservedIdentity.REMOTE_NODE), flags=IPCACHE_FLAG_NODE)


@dataclass(frozen=True)
class IpcachePod:
    """A pod as the ipcache sees it."""

    identity: int | None
    ips: Sequence[str]
    host_network: bool = False
    tunnel_endpoint: IPv4Address | None = None  # its node's IP when that is another node
    local: bool = False  # an endpoint of this node: its claim on an address beats a stale pod object's


@dataclass
class IpcacheInputs:
    own_addresses: set[str]  # this node's addresses
    remote_nodes: set[IPv4Address]  # other nodes' underlay addresses
    pod_cidrs: dict[IPv4Network, IPv4Address]  # other nodes' pod CIDRs -> their node's IP
    cidr_identities: dict[IPv4Network, int]  # ipBlock prefixes (IPv4) -> CIDR identity
    pods: list[IpcachePod] = field(default_factory=list)


def pod_cidr_identity(net: IPv4Network, identity_of: Callable[[IPv4Network], int | None]) -> int:
    """The identity of another node's pod CIDR that is no ipBlock prefix itself: the one of the
    longest ipBlock prefix covering it, else WORLD (as a miss in the datapath would)."""
    return next((i for plen in range(net.prefixlen - 1, -1, -1)
                 if (i := identity_of(net.supernet(new_prefix=plen))) is not None), int(ReservedIdentity.WORLD))


def prefix_entry(net: IPv4Network, identity: int | None, pod_cidrs: Mapping[IPv4Network, IPv4Address],
                 identity_of: Callable[[IPv4Network], int | None]) -> IpcacheTarget | None:
    """An ipBlock prefix (`identity`) or another node's pod CIDR: its identity, and the node that
    owns it when it lies inside one node's pod CIDR. None: neither."""
    if net in pod_cidrs:
        return IpcacheEntry(identity if identity is not None else pod_cidr_identity(net, identity_of), pod_cidrs[net])
    if identity is None:
        return None
    owner = next((ip for cidr, ip in pod_cidrs.items() if net.subnet_of(cidr)), None)
    return IpcacheEntry(identity, owner) if owner is not None else identity


def pod_entries(pod: IpcachePod, own: set[str]) -> tuple[dict[IPv4Network, IpcacheTarget], IPv4Address | None]:
    """One pod's /32 entries and tunnel endpoint (None: this node)."""
    if pod.identity is None or pod.host_network:
        return {}, None
    return address_entries(pod.identity, pod.ips, pod.tunnel_endpoint, own)


def address_entries(identity: int, ips: Sequence[str], tunnel: IPv4Address | None,
                    own: set[str]) -> tuple[dict[IPv4Network, IpcacheTarget], IPv4Address | None]:
    """The /32 entries of a pod's addresses (`pod_entries` without the pod: the hot path)."""
    if tunnel is not None and str(tunnel) in own:
        tunnel = None  # "another node" at one of our own addresses: a stale pod object
    entries: dict[IPv4Network, IpcacheTarget] = {}
    for ip in ips:
        net = ip_network(f"{ip}/32")
        if isinstance(net, IPv4Network):
            entries[net] = IpcacheEntry(identity, tunnel) if tunnel is not None else identity
    return entries, tunnel


def desired_ipcache(inputs: IpcacheInputs) -> dict[IPv4Network, IpcacheTarget]:
    """The whole ipcache, from scratch."""
    cache: dict[IPv4Network, IpcacheTarget] = {}
    identity_of = inputs.cidr_identities.get
    for net in {*inputs.cidr_identities, *inputs.pod_cidrs}:
        entry = prefix_entry(net, inputs.cidr_identities.get(net), inputs.pod_cidrs, identity_of)
        if entry is not None:
            cache[net] = entry
    remote = set(inputs.remote_nodes)
    for pod in sorted(inputs.pods, key=lambda p: p.local):  # local pods last: their claim wins
        entries, tunnel = pod_entries(pod, inputs.own_addresses)
        if tunnel is not None:
            remote.add(tunnel)
        cache.update(entries)
    for node_ip in remote:
        cache[IPv4Network(f"{node_ip}/32")] = NODE_ENTRY
    for addr in inputs.own_addresses:
        cache[IPv4Network(f"{addr}/32")] = int(ReservedIdentity.HOST)
    return cache
