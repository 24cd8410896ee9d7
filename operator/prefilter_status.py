"""The `.status` of each PacketFilter and CIDRDenyList: accepted or not, and how many nodes
enforce which generation (pure: no I/O, no clock but the one given).

Every upsert of a filter's record in the state log is a version; an agent acks a version once
its datapath enforces everything up to it (operator/enforcement_book.py says the same of
policies). `PrefilterStatusBook` remembers, per object, which generation each recent version
carried, so a node's ack tells which generation it enforces: the newest one whose version the
ack covers. `status` turns that into what the leader writes:

- `enforced: "N/M"`: N of the cluster's M Node objects enforce the current generation (a node
  whose agent never acked counts as not enforcing; one whose agent is disconnected counts for
  what it last acked, which its maps keep enforcing);
- `enforcedGeneration`: the newest generation every node enforces (left out while some node
  enforces none of the generations remembered);
- `nodesByGeneration`: how many nodes enforce which generation, newest first;
- `conditions`: `Accepted` (True, or False with the field and the reason: such an object is
  streamed to no node, so it shows 0/M) and `observedGeneration`.

Generation 0 is a spec without one (the API stand-in without generations); it is shown as such.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from membrane.api.state_objects import Change, CIDRDenyListState, Kind, PacketFilterState, StateKey
from membrane.k8s_models import FieldError

KINDS = (Kind.PACKET_FILTER, Kind.CIDR_DENY_LIST)
HISTORY = 16  # generations remembered per object (a node further behind enforces "an older one")
ACCEPTED = "Accepted"

JSON = dict[str, Any]


@dataclass
class _Entry:
    generation: int
    history: list[tuple[int, int]] = field(default_factory=list)  # (version, generation), oldest first


class PrefilterStatusBook:
    def __init__(self) -> None:
        self._entries: dict[StateKey, _Entry] = {}

    def restart(self) -> None:
        """A new stream history (operator start): versions start over."""
        self._entries.clear()

    def committed(self, version: int, changes: Iterable[Change]) -> None:
        for change in changes:
            key = change.key
            if key[0] not in KINDS:
                continue
            obj = change.obj
            if obj is None:
                self._entries.pop(key, None)
            elif isinstance(obj, (PacketFilterState, CIDRDenyListState)):
                entry = self._entries.setdefault(key, _Entry(obj.generation))
                entry.generation = obj.generation
                entry.history.append((version, obj.generation))
                del entry.history[:-HISTORY]

    def streamed(self, key: StateKey) -> bool:
        return key in self._entries

    def enforcement(self, key: StateKey, nodes: Iterable[str], acked: Mapping[str, int]) -> JSON:
        """`enforced`, `enforcedGeneration` and `nodesByGeneration` of one object."""
        names = sorted(set(nodes))
        entry = self._entries.get(key)
        per_node: dict[str, int | None] = {}
        for node in names:
            ack = acked.get(node, 0)
            per_node[node] = None
            if entry is not None:
                for version, generation in reversed(entry.history):
                    if ack >= version:
                        per_node[node] = generation
                        break
        current = entry.history[-1][0] if entry is not None else None
        enforcing = sum(1 for node in names if current is not None and acked.get(node, 0) >= current)
        counts: dict[int, int] = {}
        for held in per_node.values():
            if held is not None:
                counts[held] = counts.get(held, 0) + 1
        out: JSON = {"enforced": f"{enforcing}/{len(names)}",
                     "nodesByGeneration": [{"generation": g, "nodes": n} for g, n in sorted(counts.items(), reverse=True)],
                     "enforcedGeneration": None}
        if names and all(g is not None for g in per_node.values()):
            out["enforcedGeneration"] = min(g for g in per_node.values() if g is not None)
        return out


def status(obj: JSON, errors: list[FieldError], enforcement: JSON, now: str) -> JSON:
    """The whole status the leader wants on `obj` (lastTransitionTime kept while the condition's
    status does not change)."""
    meta = obj.get("metadata") or {}
    generation = int(meta.get("generation") or 0)
    accepted = not errors
    message = "streamed to every node" if accepted else "; ".join(str(e) for e in errors)[:32768]
    old = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == ACCEPTED), None)
    wanted_status = "True" if accepted else "False"
    since = old.get("lastTransitionTime") if old is not None and old.get("status") == wanted_status else None
    condition = {"type": ACCEPTED, "status": wanted_status, "reason": "Valid" if accepted else "Invalid",
                 "message": message, "observedGeneration": generation, "lastTransitionTime": since or now}
    return {"observedGeneration": generation, "conditions": [condition], **enforcement}


def differs(current: JSON | None, wanted: JSON) -> bool:
    """Whether writing `wanted` changes what `current` says (timestamps aside)."""
    current = current or {}

    def plain(value: JSON) -> JSON:
        out = {k: v for k, v in value.items() if v is not None}
        out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                             for c in value.get("conditions") or []]
        return out

    return plain(current) != plain(wanted)
