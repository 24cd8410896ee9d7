"""The applied cluster state on disk (Kubernetes mode): a base file plus an append-only journal.

A snapshot (or a compaction) writes `cluster-state.json` atomically (version, stream id, every
object) and empties the journal; each applied delta appends one fsynced line to
`cluster-journal.jsonl`. So a delta costs a line, not a rewrite of the whole cluster, and a
`kill -9` at any moment loses at most the line being written (never acked: the operator sends
it again). Loading replays the journal lines that follow the base in order and stops at the
first torn or non-consecutive line.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from membrane.api.state_objects import (EndpointState, IdentityState, Kind, NamedPortState, NamespaceState, NodeState,
                                        PolicyState, StateKey, StateObject)

from .persisting import open_private, private_dir, read_json, write_json

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
    return PolicyState(data["namespace"], data["name"], data.get("object_json", ""))


@dataclass
class SavedState:
    version: int = 0
    stream_id: str = ""
    objects: dict[StateKey, StateObject] = field(default_factory=dict)


class StateFile:
    def __init__(self, state_dir: Path, compact_after: int = COMPACT_AFTER) -> None:
        self.base = state_dir / STATE_FILE
        self.journal = state_dir / JOURNAL_FILE
        self.compact_after = compact_after
        self.lines = 0

    def load(self) -> SavedState:
        saved = read_json(self.base) or {}
        state = SavedState(int(saved.get("version", 0)), str(saved.get("stream_id", "")))
        for data in saved.get("objects", []):
            obj = object_from_json(data)
            state.objects[(obj.kind, obj.key)] = obj
        self.lines = 0
        try:
            lines = self.journal.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        clean = True
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
            for kind, key, obj in changes:
                if obj is None:
                    state.objects.pop((kind, key), None)
                else:
                    state.objects[(kind, key)] = obj
            state.version = version
            self.lines += 1
        if not clean:  # later appends must not follow a torn line
            self.write_base(state.version, state.stream_id, state.objects)
        return state

    def write_base(self, version: int, stream_id: str, objects: dict[StateKey, StateObject]) -> None:
        write_json(self.base, {"version": version, "stream_id": stream_id,
                               "objects": [object_to_json(o) for o in objects.values()]})
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
