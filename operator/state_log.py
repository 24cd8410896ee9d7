"""The versioned state the operator streams: current objects plus a bounded log of deltas (pure).

Every commit that changes anything gets the next version number (1, 2, ...). A subscriber that
last applied version v gets `deltas_after(v)` when the log still reaches back to v, else a
snapshot. The log is bounded, so a node that was away for long costs one snapshot, not an
unbounded history. `stream_id` names this history: versions of another operator process (a
restart, a failover) are unrelated numbers, so a subscriber with another stream id always
gets a snapshot.

Thread-safe: the controller commits, gRPC handlers read and wait on `cond`.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from membrane.api.state_objects import KIND_ORDER, Change, StateKey, StateObject, sort_key


@dataclass(frozen=True)
class Delta:
    version: int
    changes: tuple[Change, ...]
    seen_at: float  # when the oldest API change folded into it was observed (monotonic)


def ordered_changes(changes: list[Change]) -> tuple[Change, ...]:
    """Upserts in dependency order (namespaces, nodes, identities, endpoints, policies), then
    deletes in the reverse order, so an agent applying them one by one never holds an endpoint
    whose identity is unknown."""
    upserts = sorted((c for c in changes if c.obj is not None), key=lambda c: sort_key(c.key))
    deletes = sorted((c for c in changes if c.obj is None),
                     key=lambda c: (-KIND_ORDER[c.key[0]], c.key[1]))
    return tuple(upserts + deletes)


class StateLog:
    def __init__(self, max_deltas: int = 1024, stream_id: str | None = None) -> None:
        self.stream_id = stream_id or uuid.uuid4().hex
        self.max_deltas = max_deltas
        self.version = 0
        self.cond = threading.Condition()
        self._objects: dict[StateKey, StateObject] = {}
        self._deltas: deque[Delta] = deque(maxlen=max_deltas)

    def commit(self, desired: Mapping[StateKey, StateObject], seen_at: float) -> Delta | None:
        """Make `desired` the current state; returns the new delta, or None if nothing changed."""
        with self.cond:
            changes = [Change(key, obj) for key, obj in desired.items()
                       if self._objects.get(key) != obj]
            changes += [Change(key, None) for key in self._objects if key not in desired]
            if not changes:
                return None
            self.version += 1
            delta = Delta(self.version, ordered_changes(changes), seen_at)
            self._deltas.append(delta)
            self._objects = dict(desired)
            self.cond.notify_all()
            return delta

    def snapshot(self) -> tuple[int, list[StateObject]]:
        """The current version and every object, in dependency order."""
        with self.cond:
            keys = sorted(self._objects, key=sort_key)
            return self.version, [self._objects[k] for k in keys]

    def objects(self) -> dict[StateKey, StateObject]:
        with self.cond:
            return dict(self._objects)

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
            return [d for d in self._deltas if d.version > version]

    def wait_newer(self, version: int, timeout: float) -> bool:
        """Block until the state is newer than `version` (True) or the timeout passed."""
        with self.cond:
            return self.cond.wait_for(lambda: self.version > version, timeout=timeout)

    def seen_at(self, version: int) -> float | None:
        with self.cond:
            for delta in self._deltas:
                if delta.version == version:
                    return delta.seen_at
        return None
