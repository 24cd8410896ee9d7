"""ipcache records: IPv4 prefix -> security identity (LPM trie, pure conversions).

Addresses matching no prefix are WORLD in the datapath, so the map only
lists what the agent knows: pod /32s, the node's own addresses (HOST), other
nodes' addresses (REMOTE_NODE, flagged NODE: the overlay accepts VXLAN only
from those), other nodes' pod CIDRs (their tunnel endpoint says who owns an
address), CIDR identities of ipBlock peers.

The CIDR map (``mb_cidr_v1``) holds only the ipBlock prefixes, prefix -> CIDR
identity: the CIDR identity of any address (pods included, else WORLD),
judged alongside the address's ipcache identity on new connections.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from membrane.agent.datapath.encoding import field_to_ip, ip_to_field
from membrane.agent.datapath.layout import CidrKey, CidrValue, IpcacheKey, IpcacheValue

_U32_MAX = 0xFFFF_FFFF


@dataclass(frozen=True)
class IpcacheEntry:
    identity: int  # u32: cluster identities use 24 bits, node-local CIDR identities bit 24
    tunnel_endpoint: IPv4Address | None = None  # node hosting the prefix (None = this node)
    flags: int = 0  # IpcacheFlag (NODE: a node's underlay address, VXLAN accepted from it)

    def __post_init__(self) -> None:
        if not 0 < self.identity <= _U32_MAX:
            raise ValueError(f"identity {self.identity} must be a non-zero u32 (0 is the policy wildcard)")
        if not 0 <= self.flags <= 0xFF:
            raise ValueError(f"flags {self.flags} do not fit in 8 bits")

    def to_struct(self) -> IpcacheValue:
        tunnel = ip_to_field(self.tunnel_endpoint) if self.tunnel_endpoint is not None else 0
        return IpcacheValue(sec_identity=self.identity, tunnel_endpoint=tunnel, flags=self.flags)

    @classmethod
    def from_struct(cls, value: IpcacheValue) -> IpcacheEntry:
        tunnel = field_to_ip(value.tunnel_endpoint) if value.tunnel_endpoint else None
        return cls(identity=value.sec_identity, tunnel_endpoint=tunnel, flags=value.flags)


def ipcache_key(prefix: IPv4Network) -> IpcacheKey:
    # IPv4Network is normalised (host bits zero), which the trie relies on when listing keys.
    return IpcacheKey(prefixlen=prefix.prefixlen, ip4=ip_to_field(prefix.network_address))


def prefix_from_key(key: IpcacheKey) -> IPv4Network:
    return IPv4Network((field_to_ip(key.ip4), key.prefixlen), strict=False)


def cidr_key(prefix: IPv4Network) -> CidrKey:
    return CidrKey(prefixlen=prefix.prefixlen, ip4=ip_to_field(prefix.network_address))


def prefix_from_cidr_key(key: CidrKey) -> IPv4Network:
    return IPv4Network((field_to_ip(key.ip4), key.prefixlen), strict=False)


def cidr_value(identity: int) -> CidrValue:
    if not 0 < identity <= _U32_MAX:
        raise ValueError(f"CIDR identity {identity} must be a non-zero u32 (0 is the policy wildcard)")
    return CidrValue(sec_identity=identity)
