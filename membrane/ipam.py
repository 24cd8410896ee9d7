"""IPAM arithmetic: hand out pod addresses from a node's PodCIDR (pure).

State is a plain mapping address -> owner so the agent can persist it before it answers
kubelet; a restarted agent that reloads it can never hand out an address still in use.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network


class IpamExhausted(Exception):
    pass


@dataclass
class IpamPool:
    cidr: IPv4Network
    allocations: dict[IPv4Address, str] = field(default_factory=dict)
    # Where the next search starts: addresses are not reused right away, so a pod that was
    # just deleted does not see its address taken by the next one while peers still cache it.
    cursor: int = 0

    def __post_init__(self) -> None:
        if self.cidr.prefixlen > 30:
            raise ValueError(f"PodCIDR {self.cidr} is too small (need /30 or larger)")

    @property
    def reserved(self) -> set[IPv4Address]:
        # Network, broadcast and the first host (kept for the node's own address).
        return {self.cidr.network_address, self.cidr.broadcast_address, self.cidr.network_address + 1}

    def owner_of(self, owner: str) -> IPv4Address | None:
        for addr, who in self.allocations.items():
            if who == owner:
                return addr
        return None

    def allocate(self, owner: str) -> IPv4Address:
        """The owner's address; a new one if it has none. Idempotent per owner."""
        existing = self.owner_of(owner)
        if existing is not None:
            return existing
        size = self.cidr.num_addresses
        base = int(self.cidr.network_address)
        for step in range(size):
            offset = (self.cursor + step) % size
            addr = IPv4Address(base + offset)
            if addr in self.reserved or addr in self.allocations:
                continue
            self.allocations[addr] = owner
            self.cursor = (offset + 1) % size
            return addr
        raise IpamExhausted(f"no free address left in {self.cidr} ({len(self.allocations)} in use)")

    def release(self, owner: str) -> IPv4Address | None:
        addr = self.owner_of(owner)
        if addr is not None:
            del self.allocations[addr]
        return addr

    def to_dict(self) -> dict[str, object]:
        return {"cidr": str(self.cidr), "cursor": self.cursor,
                "allocations": {str(a): o for a, o in sorted(self.allocations.items())}}

    @classmethod
    def from_dict(cls, data: dict[str, object], cidr: IPv4Network) -> IpamPool:
        """Restore; addresses outside a changed CIDR are dropped by the caller's reconcile."""
        allocs = data.get("allocations") or {}
        assert isinstance(allocs, dict)
        pool = cls(cidr, {ipaddress.IPv4Address(a): str(o) for a, o in allocs.items()})
        cursor = data.get("cursor", 0)
        pool.cursor = int(cursor) if isinstance(cursor, int) else 0
        return pool
