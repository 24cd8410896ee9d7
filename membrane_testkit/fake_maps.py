"""A fake of the policy manager's kernel maps (policy, ipcache, CIDR) for unit tests.

Faucet style: tests assert real forwarding decisions on its contents with the engine's model
of the BPF lookup (`membrane.policy.lookup_flat`). It records every write (`log`, `writes`) and
calls `check` after each one (one batch of the map manager's plan), so a test can assert that
no single write opens a gap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Network
from typing import Any

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

    def _table(self, role: str) -> dict[Any, Any]:
        tables: dict[str, dict[Any, Any]] = {"policy": self.policy, "ipcache": self.ipcache, "cidr": self.cidrs}
        return tables[role]

    def read_map(self, role: str) -> dict[Any, Any]:
        return dict(self._table(role))

    def update_map(self, role: str, entries: Mapping[Any, Any]) -> None:
        table = self._table(role)
        limit = self.capacities.get(role)
        if limit is not None and len(table.keys() | entries.keys()) > limit:
            raise OSError(28, f"{role} map full")  # ENOSPC, what the kernel answers
        table.update(entries)
        self.writes += len(entries)
        self.log.append(f"{role}+{len(entries)}-0")
        self.check()

    def delete_map(self, role: str, keys: Sequence[Any]) -> int:
        table = self._table(role)
        removed = sum(table.pop(key, None) is not None for key in keys)
        self.writes += len(keys)
        self.log.append(f"{role}+0-{len(keys)}")
        self.check()
        return removed
