"""The map manager: desired vs written contents of each pinned map, written as differences.

One generic manager for the keyed maps the policy manager owns (policy, ipcache, cidr):
callers say what each map should hold (`set`, `remove`, `replace`), the manager diffs that
against what it wrote, and `apply()` writes only the differences in the gap-free order of
`membrane.map_plan` (updates before deletes, map by map, longest prefix first), through a
port that batches where the kernel can (DatapathPort -> datapath.pinned_maps). Steps that are
no map of ours (the endpoints' identities, written by the endpoint manager) take their place
in the same plan through a callback.

Before writing, the peak of the update (everything written, nothing deleted yet) is checked
against each map's capacity: a change that does not fit raises `MapCapacityError` with nothing
written. `resync()` reads the kernel maps, counts entries that differ from what was written
(drift: someone edited the maps, or a write was lost) in `repairs` (the agent exports it as
membrane_map_resync_repairs_total{map}), and makes the next apply write the repair.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from membrane.delta import Delta
from membrane.map_plan import GAP_FREE_ORDER, Op, plan_deltas


class MapCapacityError(RuntimeError):
    """A change that would not fit a map: nothing was written."""

    def __init__(self, role: str, needed: int, capacity: int, current: int) -> None:
        super().__init__(f"the {role} map would need {needed} entries at the peak of this update "
                         f"(it holds {current}, capacity {capacity}): change refused, the old policy "
                         f"stays enforced; raise --{role.replace('_', '-')}-map-entries or make the change smaller")
        self.role, self.needed, self.capacity, self.current = role, needed, capacity, current


class MapPort(Protocol):
    """Where the maps are: the datapath (DatapathPort) or a fake."""

    def capacity(self, role: str) -> int | None: ...
    def read_map(self, role: str) -> dict[Any, Any]: ...
    def update_map(self, role: str, entries: Mapping[Any, Any]) -> None: ...
    def delete_map(self, role: str, keys: Sequence[Any]) -> int: ...


class MapManager:
    def __init__(self, port: MapPort, roles: Iterable[str],
                 steps: Mapping[str, Callable[[Mapping[Any, Any]], None]] | None = None,
                 order: tuple[tuple[str, Op], ...] = GAP_FREE_ORDER) -> None:
        self.port = port
        self.roles = tuple(roles)
        self.steps = dict(steps or {})  # role -> callback for plan steps that are no map of ours
        self.order = order
        self.desired: dict[str, dict[Any, Any]] = {role: {} for role in self.roles}
        self.written: dict[str, dict[Any, Any]] = {role: {} for role in self.roles}
        self._dirty: dict[str, set[Hashable]] = {role: set() for role in self.roles}
        self.repairs: dict[str, int] = dict.fromkeys(self.roles, 0)  # cumulative, by resync
        self._known: set[str] = set()  # roles read back once: drift is counted from then on

    # --- desired contents -------------------------------------------------------------------
    def set(self, role: str, key: Hashable, value: Any) -> None:
        self.desired[role][key] = value
        self._dirty[role].add(key)

    def remove(self, role: str, key: Hashable) -> None:
        if self.desired[role].pop(key, None) is not None or key in self.written[role]:
            self._dirty[role].add(key)

    def replace(self, role: str, contents: Mapping[Any, Any]) -> None:
        """The whole desired content of a map (compared key by key at the next apply)."""
        self._dirty[role].update(self.desired[role])
        self._dirty[role].update(contents)
        self._dirty[role].update(self.written[role])
        self.desired[role] = dict(contents)

    def pending(self) -> dict[str, Delta[Any, Any]]:
        """What the next apply writes: dirty keys whose desired value differs from the written one."""
        out: dict[str, Delta[Any, Any]] = {}
        for role in self.roles:
            desired, written, delta = self.desired[role], self.written[role], Delta[Any, Any]()
            for key in self._dirty[role]:
                want = desired.get(key)
                if want is None:
                    if key in written:
                        delta.deletes.append(key)
                elif written.get(key) != want:
                    delta.upserts[key] = want
            out[role] = delta
        return out

    def discard(self) -> None:
        """Forget desired changes not written yet (a refused apply): desired = written again."""
        for role in self.roles:
            desired, written = self.desired[role], self.written[role]
            for key in self._dirty[role]:
                if key in written:
                    desired[key] = written[key]
                else:
                    desired.pop(key, None)
            self._dirty[role].clear()

    # --- writing ----------------------------------------------------------------------------
    def check_capacity(self, deltas: Mapping[str, Delta[Any, Any]]) -> None:
        """Raise MapCapacityError if a map would overflow at the peak of the update (new keys are
        written before stale ones are deleted)."""
        for role in self.roles:
            capacity = self.port.capacity(role)
            written = self.written[role]
            added = sum(1 for key in deltas[role].upserts if key not in written)
            if capacity is not None and added > 0 and len(written) + added > capacity:
                raise MapCapacityError(role, len(written) + added, capacity, len(written))

    def apply(self, extra: Mapping[str, Delta[Any, Any]] | None = None) -> dict[str, Delta[Any, Any]]:
        """Write the pending differences (and the `extra` steps) in plan order; returns what was
        written per map. MapCapacityError: nothing written, the changes stay pending."""
        deltas = self.pending()
        self.check_capacity(deltas)
        for batch in plan_deltas({**deltas, **(extra or {})}, self.order):
            step = self.steps.get(batch.role)
            if step is not None:
                step(dict(batch.entries))
                continue
            written = self.written[batch.role]
            if batch.op is Op.UPDATE:
                self.port.update_map(batch.role, dict(batch.entries))
                written.update(batch.entries)
            else:
                keys = batch.keys()
                self.port.delete_map(batch.role, keys)
                for key in keys:
                    written.pop(key, None)
        for dirty in self._dirty.values():
            dirty.clear()
        return deltas

    def delete_now(self, role: str, keys: Sequence[Hashable]) -> None:
        """Delete at once, outside any plan (entries nobody wants that take room the apply needs)."""
        if keys:
            self.port.delete_map(role, list(keys))
            for key in keys:
                self.written[role].pop(key, None)
                self.desired[role].pop(key, None)
                self._dirty[role].discard(key)

    def resync(self, roles: Iterable[str] | None = None) -> dict[str, int]:
        """Read the kernel maps: written = what they hold; every key is compared at the next
        apply. Returns (and adds to `repairs`) the entries that differed from what was written
        (not at the first read of a map: what a restarted agent finds there is no drift)."""
        drift = {}
        for role in roles if roles is not None else self.roles:
            actual = self.port.read_map(role)
            written = self.written[role]
            drift[role] = 0
            if role in self._known:
                drift[role] = sum(1 for key, value in actual.items() if written.get(key) != value) + sum(
                    1 for key in written if key not in actual)
                self.repairs[role] += drift[role]
            self._known.add(role)
            self.written[role] = dict(actual)
            self._dirty[role].update(actual)
            self._dirty[role].update(self.desired[role])
        return drift
