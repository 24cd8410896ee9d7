"""The applied cluster state at rest (Kubernetes mode): rows of state.db.

Each stream object is one row (`cluster_objects`, the object encoded as the stream's own
protobuf Change, membrane/api/state_codec.py), the version and stream id applied are two `meta`
values. A delta writes its changed rows and its version in one transaction, a snapshot replaces
every row in one: a `kill -9` at any moment leaves the cache at the version before or after,
never between. These transactions are not durable against a power loss (`synchronous=NORMAL`):
the cache is only a cache, the operator holds the whole state and sends it again.

A cache that cannot be trusted (a row that does not parse, a state.db set aside as damaged, or a
cache that ends before the version the kernel's state witness recorded: a lost log, an older
copy) is emptied and reported as damaged: the agent keeps the maps exactly as they are (they
hold the last applied state) and rewrites them only from the operator's next snapshot. Never an
older or empty state in their place: that would drop pods or a deny policy until the operator
answers.

Upgrade: the first load on a state dir of an earlier release imports its `cluster-state.json`
and `cluster-journal.jsonl` (agent/legacy_reading.py) in one transaction, then moves them to
`pre-sqlite/`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from membrane.api.state_codec import object_bytes, object_from_bytes
from membrane.api.state_objects import StateKey, StateObject

from . import legacy_reading
from .datapath.witness import Mark, MemoryWitness, Slot, Witness
from .state_db import StateDb
from .state_files import DamagedFile, set_aside

log = logging.getLogger("membrane.cluster")

VERSION_META = "cluster-version"
STREAM_META = "cluster-stream"
MIGRATED_META = "cluster-migrated-from-json"


@dataclass
class SavedState:
    version: int = 0
    stream_id: str = ""
    objects: dict[StateKey, StateObject] = field(default_factory=dict)
    damaged: str | None = None  # why the cache was set aside (then it is empty)


def stream_tag(stream_id: str) -> int:
    """A stable 63-bit number for a stream id (the witness stores numbers)."""
    return int.from_bytes(hashlib.sha256(stream_id.encode()).digest()[:8], "big") >> 1


class ClusterCache:
    def __init__(self, db: StateDb, witness: Witness | MemoryWitness | None = None) -> None:
        self.db = db
        self.state_dir = db.path.parent
        self.witness: Witness | MemoryWitness = witness if witness is not None else MemoryWitness()

    def load(self, set_aside_damage: bool = True) -> SavedState:
        """The saved state; an empty one with `damaged` set when it cannot be trusted (it is then
        emptied, unless `set_aside_damage` is False: a read-only peek, which also leaves an
        earlier release's files where they are)."""
        try:
            if self.db.damaged_before is not None:
                raise DamagedFile(self.db.path, f"set aside: {self.db.damaged_before}")
            legacy = legacy_reading.cluster_files(self.state_dir)
            if legacy and self.db.get_meta(MIGRATED_META) is None:
                if not set_aside_damage:
                    found = legacy_reading.read_cluster(self.state_dir)
                    return SavedState(found.version, found.stream_id, found.objects)
                self._migrate(legacy)
            elif legacy and set_aside_damage:
                from .state_storing import keep_legacy
                keep_legacy(self.state_dir, legacy)  # imported before a crash stopped the move
            state = self._read()
        except DamagedFile as exc:
            if set_aside_damage:
                self._set_aside()
            return SavedState(damaged=str(exc))
        if set_aside_damage and self.witness.get(Slot.CLUSTER_CACHE) is None:
            self.witness.set(Slot.CLUSTER_CACHE, Mark(state.version, stream_tag(state.stream_id)))
        return state

    def _migrate(self, legacy: list[Path]) -> None:
        from .state_storing import keep_legacy
        try:
            found = legacy_reading.read_cluster(self.state_dir)
        except DamagedFile:
            for path in legacy:
                set_aside(path, keep_original=True)
            self.db.put_meta(MIGRATED_META, "damaged")
            keep_legacy(self.state_dir, legacy)
            raise
        with self.db.transaction():
            self._replace(found.version, found.stream_id, found.objects)
            self.db.put_meta(MIGRATED_META, legacy[0].name)
        keep_legacy(self.state_dir, legacy)  # after the commit: a crash here imports nothing twice
        log.warning("cluster cache imported from the previous release's files; they are kept as a backup",
                    extra={"fields": {"version": found.version, "objects": len(found.objects)}})

    def _read(self) -> SavedState:
        state = SavedState(int(self.db.get_meta(VERSION_META) or 0), self.db.get_meta(STREAM_META) or "")
        for kind, key, body in self.db.cluster_rows():
            try:
                obj = object_from_bytes(body)
            except ValueError as exc:
                raise DamagedFile(self.db.path, f"cluster object {kind}/{key}: {exc}") from None
            if (obj.kind.value, obj.key) != (kind, key):
                raise DamagedFile(self.db.path, f"cluster object {kind}/{key} holds {obj.kind.value}/{obj.key}")
            state.objects[(obj.kind, obj.key)] = obj
        mark = self.witness.get(Slot.CLUSTER_CACHE)
        if mark is not None and (mark.tag != stream_tag(state.stream_id) or state.version < mark.seq):
            raise DamagedFile(self.db.path, f"the cache ends at version {state.version}, the kernel's witness says "
                                            f"version {mark.seq} of its stream was applied")
        return state

    def _set_aside(self) -> None:
        with self.db.transaction():
            self._replace(0, "", {})

    def _replace(self, version: int, stream_id: str, objects: dict[StateKey, StateObject]) -> None:
        self.db.clear_cluster_objects()
        for (kind, key), obj in objects.items():
            self.db.put_cluster_object(kind.value, key, object_bytes(obj))
        self.db.put_meta(VERSION_META, str(version))
        self.db.put_meta(STREAM_META, stream_id)

    def write_snapshot(self, version: int, stream_id: str, objects: dict[StateKey, StateObject]) -> None:
        """Every row replaced by `objects`, as of `version`, in one transaction."""
        with self.db.transaction():
            self._replace(version, stream_id, objects)
        self.witness.set(Slot.CLUSTER_CACHE, Mark(version, stream_tag(stream_id)))

    def write_delta(self, version: int, stream_id: str, changes: list[tuple[StateKey, StateObject | None]]) -> None:
        """The changed rows and the new version, in one transaction."""
        with self.db.transaction():
            for (kind, key), obj in changes:
                if obj is None:
                    self.db.delete_cluster_object(kind.value, key)
                else:
                    self.db.put_cluster_object(kind.value, key, object_bytes(obj))
            self.db.put_meta(VERSION_META, str(version))
            self.db.put_meta(STREAM_META, stream_id)
        self.witness.set(Slot.CLUSTER_CACHE, Mark(version, stream_tag(stream_id)))

