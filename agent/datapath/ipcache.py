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

from ipaddress import IPv4Network

from membrane.agent.datapath.encoding import field_to_ip, ip_to_field
from membrane.agent.datapath.layout import CidrKey, CidrValue, IpcacheKey, IpcacheValue
from membrane.ipcache import IpcacheEntry  # the record itself is pure (the ipcache's desired content)

__all__ = ["IpcacheEntry", "cidr_key", "cidr_value", "ipcache_entry", "ipcache_key", "ipcache_value",
           "prefix_from_cidr_key", "prefix_from_key"]

_U32_MAX = 0xFFFF_FFFF


def ipcache_value(entry: IpcacheEntry) -> IpcacheValue:
    tunnel = ip_to_field(entry.tunnel_endpoint) if entry.tunnel_endpoint is not None else 0
    return IpcacheValue(sec_identity=entry.identity, tunnel_endpoint=tunnel, flags=entry.flags)


def ipcache_entry(value: IpcacheValue) -> IpcacheEntry:
    tunnel = field_to_ip(value.tunnel_endpoint) if value.tunnel_endpoint else None
    return IpcacheEntry(identity=value.sec_identity, tunnel_endpoint=tunnel, flags=value.flags)


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
