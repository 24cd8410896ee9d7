"""The gap-free write plan: old and new desired contents per map -> the ordered list of batches (pure).

A policy update touches several maps that the datapath reads together for one packet: the
policy map (what an endpoint allows, by peer identity), the ipcache (address -> identity), the
CIDR map (address -> ipBlock identity) and each local endpoint's own identity (the endpoints
map). They cannot change atomically, so the order of the writes decides what a packet sees in
between. ``GAP_FREE_ORDER`` is that order:

1. policy updates: rules for identities that are about to appear are in place before any
   address maps to them; stale rules still stand;
2. ipcache updates, 3. CIDR updates, 4. endpoint identities: addresses move to their new
   identities, each of which already has its rules;
5. ipcache deletes, 6. CIDR deletes: addresses that are gone;
7. policy deletes: rules nobody needs any more, last.

So during an update a packet is judged by the old state or the new one (never by a state in
which an address has an identity whose rules are not written yet), and allowed traffic is never
dropped by the update itself. The caller bumps the policy revision after the last batch.

The three maps read by longest-prefix match are LPM tries, written element by element (one
syscall each, or one batch syscall that the kernel still applies element by element, in
order), so the order *inside* a batch counts too: updates go longest
prefix first (a short prefix never takes an address away from an old, longer entry before the
new longer entry that should catch it is written) and deletes shortest prefix first (a long old
entry is never deleted while a shorter old one would catch its addresses). tests/unit/
test_map_plan.py replays every prefix of a plan, element by element, against a model of the
datapath and checks that no intermediate state gives a verdict neither end state gives.

Limits (no order can help: several maps are never written atomically), so a verdict neither
state gives is possible for an instant when, in one apply, (a) an address moves out of an
identity that also gains rules, or into one that also loses rules; (b) an address changes both
its identity (ipcache) and its CIDR identity (a new ipBlock prefix over a relabelled pod). The
policy engine makes (a) rare (identities stand for label sets: a rule for a label set does not
usually change in the same apply as the last pod leaving it); both end at the last batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from membrane.delta import Delta, diff


class Op(str, Enum):  # noqa: UP042 - StrEnum would change what str() prints
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class Batch:
    """Writes to one map of one kind: (key, value) pairs to update, or keys (value None) to delete."""

    role: str
    op: Op
    entries: tuple[tuple[Hashable, Any], ...]

    def keys(self) -> list[Hashable]:
        return [key for key, _ in self.entries]


# Roles: the keyed maps the policy manager writes, and the endpoints' identities (a field of the
# endpoints map, written by the endpoint manager: an update-only step).
GAP_FREE_ORDER: Final[tuple[tuple[str, Op], ...]] = (
    ("policy", Op.UPDATE),
    ("ipcache", Op.UPDATE),
    ("cidr", Op.UPDATE),
    ("endpoint_identity", Op.UPDATE),
    ("ipcache", Op.DELETE),
    ("cidr", Op.DELETE),
    ("policy", Op.DELETE),
)


def prefix_length(key: Hashable) -> int:
    """The LPM prefix length of a key (IPv4Network, FlatKey); 0 for keys of exact-match maps."""
    length = getattr(key, "prefixlen", 0)
    return length if isinstance(length, int) else 0


def _ordered(op: Op, entries: Iterable[tuple[Hashable, Any]]) -> tuple[tuple[Hashable, Any], ...]:
    # sorted() is stable: equal prefix lengths keep the caller's order.
    entries = tuple(entries)
    lengths = [prefix_length(key) for key, _ in entries]
    if not lengths or min(lengths) == max(lengths):
        return entries  # one prefix length (all /32s, exact-match keys): nothing to order
    order = sorted(range(len(entries)), key=lengths.__getitem__, reverse=op is Op.UPDATE)
    if op is Op.UPDATE:  # reverse=True keeps equal keys in reverse order: restore the caller's
        order = sorted(range(len(entries)), key=lambda i: -lengths[i])
    return tuple(entries[i] for i in order)


def plan_deltas(deltas: Mapping[str, Delta[Any, Any]],
                order: tuple[tuple[str, Op], ...] = GAP_FREE_ORDER) -> list[Batch]:
    """The ordered, non-empty batches that write each map's delta. A role the order does not
    name is an error (its place in the order would be a guess)."""
    unknown = sorted(set(deltas) - {role for role, _ in order})
    if unknown:
        raise ValueError(f"no place in the write order for maps {unknown}")
    plan = []
    for role, op in order:
        delta = deltas.get(role)
        if delta is None:
            continue
        entries = delta.upserts.items() if op is Op.UPDATE else ((key, None) for key in delta.deletes)
        batch = _ordered(op, entries)
        if batch:
            plan.append(Batch(role, op, batch))
    return plan


def plan_update(old: Mapping[str, Mapping[Any, Any]], new: Mapping[str, Mapping[Any, Any]],
                order: tuple[tuple[str, Op], ...] = GAP_FREE_ORDER) -> list[Batch]:
    """The plan that turns the maps' `old` contents into `new` (a role missing on one side: empty)."""
    roles = [role for role in dict.fromkeys(r for r, _ in order) if role in old or role in new]
    return plan_deltas({role: diff(new.get(role, {}), old.get(role, {})) for role in roles}, order)


def replay(contents: Mapping[str, Mapping[Any, Any]], batches: Iterable[Batch]) -> dict[str, dict[Any, Any]]:
    """The maps after the batches (a model of writing them; tests replay plan prefixes with it)."""
    out = {role: dict(entries) for role, entries in contents.items()}
    for batch in batches:
        table = out.setdefault(batch.role, {})
        for key, value in batch.entries:
            if batch.op is Op.UPDATE:
                table[key] = value
            else:
                table.pop(key, None)
    return out
