"""The versioned state the operator streams: current objects plus a bounded log of deltas (pure).

Every commit that changes anything gets the next version number (1, 2, ...). A subscriber that
last applied version v gets `deltas_after(v)` when the log still reaches back to v, else a
snapshot. The log is bounded, so a node that was away for long costs one snapshot, not an
unbounded history. `stream_id` names this history: versions of another operator process (a
restart, a failover) are unrelated numbers, so a subscriber with another stream id always
gets a snapshot.

Two ways in: `commit(desired)` diffs a whole desired state against the current one (O(state));
`apply(changes)` takes only what a controller pass recomputed (O(changes)), which is what the
operator does. With an `encoder` (the serving side installs one), every change is serialized
once when it is committed: each delta is kept as the bytes of its wire message, and every
current object as the bytes of its snapshot entry, so sending to a thousand subscribers costs
no re-encoding (`wire_after`, `snapshot_wire`).

Thread-safe: the controller commits, gRPC handlers read; `listeners` are called (outside the
lock) after each new version, so an event loop can wake its streams.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from membrane.api.state_objects import KIND_ORDER, Change, StateKey, StateObject, sort_key

# (change) -> the bytes of one `changes` entry; (version, stream_id, snapshot, entries) -> message
ChangeEncoder = Callable[[Change], bytes]
UpdateEncoder = Callable[[int, str, bool, list[bytes]], bytes]
SnapshotEncoder = Callable[[int, str, list[bytes]], list[bytes]]


@dataclass(frozen=True)
class Delta:
    version: int
    changes: tuple[Change, ...]
    seen_at: float  # when the oldest API change folded into it was observed (monotonic)
    wire: bytes = field(default=b"", repr=False, compare=False)  # the encoded message, if any


@dataclass(frozen=True)
class Codec:
    change: ChangeEncoder
    update: UpdateEncoder
    snapshot: SnapshotEncoder


def ordered_changes(changes: list[Change]) -> tuple[Change, ...]:
    """Upserts in dependency order (namespaces, nodes, identities, endpoints, policies), then
    deletes in the reverse order, so an agent applying them one by one never holds an endpoint
    whose identity is unknown."""
    upserts = sorted((c for c in changes if c.obj is not None), key=lambda c: sort_key(c.key))
    deletes = sorted((c for c in changes if c.obj is None),
                     key=lambda c: (-KIND_ORDER[c.key[0]], c.key[1]))
    return tuple(upserts + deletes)


class StateLog:
    def __init__(self, max_deltas: int = 1024, stream_id: str | None = None,
                 codec: Codec | None = None) -> None:
        self.stream_id = stream_id or uuid.uuid4().hex
        self.max_deltas = max_deltas
        self.version = 0
        self.cond = threading.Condition()
        self.listeners: list[Callable[[], None]] = []
        self._objects: dict[StateKey, StateObject] = {}
        self._deltas: deque[Delta] = deque(maxlen=max_deltas)
        self._codec: Codec | None = None
        self._encoded: dict[StateKey, bytes] = {}  # current objects as snapshot entries
        self._snapshot: tuple[int, list[bytes]] | None = None  # cached encoded snapshot
        if codec is not None:
            self.use_codec(codec)

    # --- writing ------------------------------------------------------------------------------
    def use_codec(self, codec: Codec) -> None:
        """Serialize changes at commit from now on (and the current objects right away)."""
        with self.cond:
            if self._codec is not None:
                return
            self._codec = codec
            self._encoded = {key: codec.change(Change(key, obj))
                             for key, obj in self._objects.items()}

    def commit(self, desired: Mapping[StateKey, StateObject], seen_at: float) -> Delta | None:
        """Make `desired` the current state; returns the new delta, or None if nothing changed."""
        with self.cond:
            changes: dict[StateKey, StateObject | None] = {
                key: obj for key, obj in desired.items() if self._objects.get(key) != obj}
            changes.update({key: None for key in self._objects if key not in desired})
        return self.apply(changes, seen_at)

    def apply(self, changes: Mapping[StateKey, StateObject | None], seen_at: float) -> Delta | None:
        """Upsert (object) or delete (None) the given keys; entries that change nothing are
        dropped. Returns the new delta, or None if nothing changed."""
        with self.cond:
            real = [Change(key, obj) for key, obj in changes.items()
                    if self._objects.get(key) != obj]
            if not real:
                return None
            ordered = ordered_changes(real)
            wire = b""
            codec = self._codec
            if codec is not None:
                entries = [codec.change(c) for c in ordered]
                wire = codec.update(self.version + 1, self.stream_id, False, entries)
                for change, entry in zip(ordered, entries, strict=True):
                    if change.obj is None:
                        self._encoded.pop(change.key, None)
                    else:
                        self._encoded[change.key] = entry
            for change in ordered:
                if change.obj is None:
                    self._objects.pop(change.key, None)
                else:
                    self._objects[change.key] = change.obj
            self.version += 1
            delta = Delta(self.version, ordered, seen_at, wire)
            self._deltas.append(delta)
            self.cond.notify_all()
            listeners = list(self.listeners)
        for listener in listeners:
            listener()
        return delta

    # --- reading ------------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, list[StateObject]]:
        """The current version and every object, in dependency order."""
        with self.cond:
            keys = sorted(self._objects, key=sort_key)
            return self.version, [self._objects[k] for k in keys]

    def snapshot_wire(self) -> tuple[int, list[bytes]]:
        """The current version and the snapshot as encoded messages (built once per version)."""
        with self.cond:
            if self._codec is None:
                raise RuntimeError("no codec installed")
            if self._snapshot is None or self._snapshot[0] != self.version:
                entries = [self._encoded[k] for k in sorted(self._encoded, key=sort_key)]
                self._snapshot = (self.version,
                                  self._codec.snapshot(self.version, self.stream_id, entries))
            return self._snapshot

    def objects(self) -> dict[StateKey, StateObject]:
        with self.cond:
            return dict(self._objects)

    def __len__(self) -> int:
        return len(self._objects)

    def deltas_after(self, version: int) -> list[Delta] | None:
        """Deltas with a version above `version`, or None when the log no longer reaches back
        that far (or `version` is from the future: another history)."""
        with self.cond:
            if version > self.version:
                return None
            if version == self.version:
                return []
            oldest = self._deltas[0].version if self._deltas else self.version + 1
            if version + 1 < oldest:
                return None
            # Deltas are consecutive: index arithmetic instead of a scan of the whole log.
            start = version + 1 - oldest
            return [self._deltas[i] for i in range(start, len(self._deltas))]

    def wire_after(self, version: int) -> list[tuple[int, bytes]] | None:
        """Like `deltas_after`, as (version, encoded message) pairs."""
        deltas = self.deltas_after(version)
        if deltas is None:
            return None
        out = []
        for delta in deltas:
            wire = delta.wire
            if not wire:  # committed before a codec was installed
                with self.cond:
                    codec = self._codec
                if codec is None:
                    raise RuntimeError("no codec installed")
                wire = codec.update(delta.version, self.stream_id, False,
                                    [codec.change(c) for c in delta.changes])
            out.append((delta.version, wire))
        return out

    def seen_at(self, version: int) -> float | None:
        with self.cond:
            oldest = self._deltas[0].version if self._deltas else self.version + 1
            if oldest <= version <= self.version:
                return self._deltas[version - oldest].seen_at
        return None
