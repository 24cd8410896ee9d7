"""The applied cluster state on disk (Kubernetes mode): a base file plus an append-only journal.

A snapshot (or a compaction) writes `cluster-state.json` atomically (version, stream id, every
object) and empties the journal; each applied delta appends one fsynced line to
`cluster-journal.jsonl`. So a delta costs a line, not a rewrite of the whole cluster, and a
`kill -9` at any moment loses at most the line being written (never acked: the operator sends
it again). Loading replays the journal lines that follow the base in order and stops at the
first torn or non-consecutive line.

The cache is only a cache: the operator holds the whole state. A damaged base (empty, garbage,
truncated) or a cache that ends before the version the kernel's state witness recorded
(a deleted or cut-short journal, an older copy) is set aside as `.damaged` and the agent starts
with no cluster state: it keeps the maps exactly as they are (they hold the last applied
state) and rewrites them only from the operator's next snapshot. Never an older or empty state
in their place: that would drop pods or a deny policy until the operator answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from membrane.api.state_objects import (
    CIDRDenyListState,
    EndpointPortState,
    EndpointSliceState,
    EndpointState,
    IdentityState,
    Kind,
    NamedPortState,
    NamespaceState,
    NodeState,
    PacketFilterState,
    PolicyState,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
    StateKey,
    StateObject,
)

from .datapath.witness import Mark, MemoryWitness, Slot, Witness
from .persisting import open_private, private_dir, write_json
from .state_files import DamagedFile, read_json_checked, set_aside

log = logging.getLogger("membrane.cluster")

STATE_FILE = "cluster-state.json"
JOURNAL_FILE = "cluster-journal.jsonl"
COMPACT_AFTER = 256  # journal lines before the base is rewritten


def object_to_json(obj: StateObject) -> dict[str, Any]:
    return {"kind": obj.kind.value, **asdict(obj)}


def object_from_json(data: dict[str, Any]) -> StateObject:
    kind = Kind(data["kind"])
    if kind is Kind.NAMESPACE:
        return NamespaceState(data["name"], tuple((k, v) for k, v in data.get("labels", ())))
    if kind is Kind.NODE:
        return NodeState(data["name"], tuple(data.get("addresses", ())), data.get("pod_cidr", ""))
    if kind is Kind.IDENTITY:
        return IdentityState(int(data["id"]), tuple(data.get("labels", ())))
    if kind is Kind.ENDPOINT:
        return EndpointState(data["namespace"], data["name"], tuple(data.get("ips", ())), int(data.get("identity", 0)),
                             data.get("node_name", ""), tuple((k, v) for k, v in data.get("labels", ())),
                             tuple(NamedPortState(**p) for p in data.get("named_ports", ())), data.get("uid", ""))
    if kind is Kind.SERVICE:
        return ServiceState(
            data["namespace"], data["name"], data.get("type", "ClusterIP"), tuple(data.get("cluster_ips", ())),
            tuple(ServicePortState(**p) for p in data.get("ports", ())), tuple(data.get("external_ips", ())),
            tuple(data.get("load_balancer_ips", ())), int(data.get("affinity_timeout", 0)),
            bool(data.get("external_traffic_local")), bool(data.get("internal_traffic_local")),
            int(data.get("health_check_node_port", 0)))
    if kind is Kind.ENDPOINTSLICE:
        return EndpointSliceState(
            data["namespace"], data["name"], data.get("service", ""), data.get("address_type", "IPv4"),
            tuple(EndpointPortState(**p) for p in data.get("ports", ())),
            tuple(SliceEndpointState(**{**e, "addresses": tuple(e.get("addresses", ())),
                                        "hint_zones": tuple(e.get("hint_zones", ()))})
                  for e in data.get("endpoints", ())))
    if kind is Kind.PACKET_FILTER:
        return PacketFilterState(data["name"], int(data.get("generation", 0)), data.get("spec_json", ""))
    if kind is Kind.CIDR_DENY_LIST:
        return CIDRDenyListState(data["name"], int(data.get("generation", 0)), tuple(data.get("cidrs", ())))
    return PolicyState(data["namespace"], data["name"], data.get("object_json", ""))


@dataclass
class SavedState:
    version: int = 0
    stream_id: str = ""
    objects: dict[StateKey, StateObject] = field(default_factory=dict)
    damaged: str | None = None  # why the cache was set aside (then it is empty)


def stream_tag(stream_id: str) -> int:
    """A stable 63-bit number for a stream id (the witness stores numbers)."""
    return int.from_bytes(hashlib.sha256(stream_id.encode()).digest()[:8], "big") >> 1


class StateFile:
    def __init__(self, state_dir: Path, compact_after: int = COMPACT_AFTER,
                 witness: Witness | MemoryWitness | None = None) -> None:
        self.base = state_dir / STATE_FILE
        self.journal = state_dir / JOURNAL_FILE
        self.compact_after = compact_after
        self.witness: Witness | MemoryWitness = witness if witness is not None else MemoryWitness()
        self.lines = 0

    def load(self, set_aside_damage: bool = True) -> SavedState:
        """The saved state; an empty one with `damaged` set when the files cannot be trusted
        (they are then set aside, unless `set_aside_damage` is False: a read-only peek)."""
        try:
            return self._load()
        except DamagedFile as exc:
            if set_aside_damage:
                for path in (self.base, self.journal):
                    set_aside(path)
                self.lines = 0
            return SavedState(damaged=str(exc))

    def _load(self) -> SavedState:
        saved, salvaged = read_json_checked(self.base)
        if saved is not None and not isinstance(saved, dict):
            raise DamagedFile(self.base, "not a cluster state")
        saved = saved or {}
        try:
            state = SavedState(int(saved.get("version", 0)), str(saved.get("stream_id", "")))
            for data in saved.get("objects", []):
                obj = object_from_json(data)
                state.objects[(obj.kind, obj.key)] = obj
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DamagedFile(self.base, f"an object does not parse: {exc}") from None
        self.lines = 0
        try:
            lines = self.journal.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        clean = not salvaged
        for line in lines:
            try:
                entry = json.loads(line)
                version, stream_id = int(entry["version"]), str(entry["stream_id"])
                changes = [(Kind(kind), key, object_from_json(obj) if obj is not None else None)
                           for kind, key, obj in entry["changes"]]
            except (ValueError, KeyError, TypeError):
                log.warning("cluster journal: torn line ignored", extra={"fields": {"after": state.version}})
                clean = False
                break
            if stream_id == state.stream_id and version <= state.version:
                continue  # already in the base (a compaction interrupted before the truncate)
            if stream_id != state.stream_id or version != state.version + 1:
                clean = False
                break
            for kind, key, changed in changes:
                if changed is None:
                    state.objects.pop((kind, key), None)
                else:
                    state.objects[(kind, key)] = changed
            state.version = version
            self.lines += 1
        mark = self.witness.get(Slot.CLUSTER_CACHE)
        if mark is not None and (mark.tag != stream_tag(state.stream_id) or state.version < mark.seq):
            where = self.base if not self.base.exists() else self.journal
            raise DamagedFile(where, f"the cache ends at version {state.version}, the kernel's witness says "
                                     f"version {mark.seq} of its stream was applied")
        if not clean:  # later appends must not follow a torn line
            self.write_base(state.version, state.stream_id, state.objects)
        elif mark is None:
            self.witness.set(Slot.CLUSTER_CACHE, Mark(state.version, stream_tag(state.stream_id)))
        return state

    def write_base(self, version: int, stream_id: str, objects: dict[StateKey, StateObject]) -> None:
        write_json(self.base, {"version": version, "stream_id": stream_id,
                               "objects": [object_to_json(o) for o in objects.values()]})
        self.witness.set(Slot.CLUSTER_CACHE, Mark(version, stream_tag(stream_id)))
        with open_private(self.journal) as handle:  # the base holds everything now
            os.fsync(handle.fileno())
        self.lines = 0

    def append(self, version: int, stream_id: str, changes: list[tuple[StateKey, StateObject | None]],
               objects: dict[StateKey, StateObject]) -> None:
        """Journal one applied delta (compacting into the base now and then)."""
        if self.lines >= self.compact_after:
            self.write_base(version, stream_id, objects)
            return
        line = json.dumps({"version": version, "stream_id": stream_id,
                           "changes": [[key[0].value, key[1], object_to_json(obj) if obj is not None else None]
                                       for key, obj in changes]}, sort_keys=True, separators=(",", ":"))
        private_dir(self.journal.parent)
        with open_private(self.journal, "a") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.lines += 1
        self.witness.set(Slot.CLUSTER_CACHE, Mark(version, stream_tag(stream_id)))
