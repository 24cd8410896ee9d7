"""A fake of the policy manager's kernel maps (policy, ipcache, CIDR) for unit tests.

Faucet style: tests assert real forwarding decisions on its contents with the engine's model
of the BPF lookup (`membrane.policy.lookup_flat`). It records every write (`log`, `writes`) and
calls `check` after each one, so a test can assert that no single write opens a gap.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from ipaddress import IPv4Network
from typing import Any

from membrane.delta import Delta
from membrane.policy import FlatKey, FlatValue


class FakePolicyMaps:
    def __init__(self) -> None:
        self.policy: dict[FlatKey, FlatValue] = {}
        self.ipcache: dict[IPv4Network, Any] = {}
        self.cidrs: dict[IPv4Network, int] = {}
        self.writes = 0
        self.log: list[str] = []
        self.check: Callable[[], None] = lambda: None
        self.capacities: dict[str, int] = {}  # role -> max entries; a write beyond fails as the kernel's would
        self.revision = 0

    def capacity(self, role: str) -> int | None:
        return self.capacities.get(role)

    def bump_policy_revision(self) -> int:
        self.revision += 1
        self.log.append(f"revision={self.revision}")
        return self.revision

    def _write(self, name: str, table: dict[Any, Any], delta: Delta[Hashable, Any]) -> None:
        limit = self.capacities.get(name)
        if limit is not None and len(table.keys() | delta.upserts.keys()) > limit:
            raise OSError(28, f"{name} map full")  # ENOSPC, what the kernel answers
        table.update(delta.upserts)
        for key in delta.deletes:
            del table[key]
        self.writes += len(delta.upserts) + len(delta.deletes)
        self.log.append(f"{name}+{len(delta.upserts)}-{len(delta.deletes)}")
        self.check()

    def read_policy(self) -> dict[FlatKey, FlatValue]:
        return dict(self.policy)

    def write_policy(self, delta: Delta[FlatKey, FlatValue]) -> None:
        self._write("policy", self.policy, delta)  # type: ignore[arg-type]

    def read_ipcache(self) -> dict[IPv4Network, Any]:
        return dict(self.ipcache)

    def write_ipcache(self, delta: Delta[IPv4Network, Any]) -> None:
        self._write("ipcache", self.ipcache, delta)  # type: ignore[arg-type]

    def read_cidrs(self) -> dict[IPv4Network, int]:
        return dict(self.cidrs)

    def write_cidrs(self, delta: Delta[IPv4Network, int]) -> None:
        self._write("cidr", self.cidrs, delta)  # type: ignore[arg-type]
