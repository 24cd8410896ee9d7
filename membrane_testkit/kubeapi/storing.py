"""The object store: current objects, one global resourceVersion and a bounded change history.

Every write takes the next resourceVersion (a counter shown as a string), so the history holds
exactly one change per version from `history_start + 1` to `rv`. A watch or an exact list from a
version older than `history_start` is answered 410 Gone, as etcd compaction makes Kubernetes do.
Stored dicts are never mutated after they are committed: readers may share them but must copy
before changing anything.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .statuses import gone

JSON = dict[str, Any]
Key = tuple[str, str, str, str]  # (group, plural, namespace or "", name)


@dataclass(frozen=True)
class Change:
    """One committed write. For DELETED, `obj` is the last state stamped with the deletion's version."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    key: Key
    obj: JSON
    prev: JSON | None


def stamp(obj: JSON, rv: int) -> JSON:
    """A shallow copy of `obj` whose metadata.resourceVersion is `rv`."""
    return {**obj, "metadata": {**obj.get("metadata", {}), "resourceVersion": str(rv)}}


class Store:
    """Thread-safe store; `cond` guards everything and is notified on each change."""

    def __init__(self, history_limit: int = 10_000) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.rv = 0
        self.history_start = 0
        self.history_limit = history_limit
        # (group, plural) -> (namespace, name) -> object
        self._objects: dict[tuple[str, str], dict[tuple[str, str], JSON]] = {}
        self._history: list[Change] = []
        # Watch control: bumping `watch_epoch` ends every open watch, `bookmark_epoch` asks for bookmarks.
        self.watch_epoch = 0
        self.bookmark_epoch = 0
        self.abrupt_close = False
        self.on_commit: Callable[[], None] | None = None

    # --- reads -------------------------------------------------------------------------------
    def get(self, key: Key) -> JSON | None:
        """The current object (shared, do not mutate), or None."""
        with self.cond:
            return self._objects.get((key[0], key[1]), {}).get((key[2], key[3]))

    def items(self, group: str, plural: str, namespace: str | None = None) -> list[tuple[Key, JSON]]:
        """Current objects of one resource, sorted by (namespace, name) like etcd keys."""
        with self.cond:
            found = [((group, plural, ns, name), o) for (ns, name), o in self._objects.get((group, plural), {}).items()
                     if namespace is None or ns == namespace]
        return sorted(found, key=lambda item: (item[0][2], item[0][3]))

    def keys(self) -> list[Key]:
        """Every stored key."""
        with self.cond:
            return [(g, p, ns, n) for (g, p), objs in self._objects.items() for (ns, n) in objs]

    def snapshot(self, group: str, plural: str, namespace: str | None, rv: int) -> list[tuple[Key, JSON]]:
        """Objects of one resource as they were at version `rv`; 410 when that is compacted."""
        with self.cond:
            if rv < self.history_start:
                raise gone("The resourceVersion for the provided list is too old.")
            state = dict(self.items(group, plural, namespace))
            for change in reversed(self._history):
                if change.rv <= rv:
                    break
                key = change.key
                if key[0] != group or key[1] != plural or (namespace is not None and key[2] != namespace):
                    continue
                if change.type == "ADDED":
                    state.pop(key, None)
                elif change.prev is not None:
                    state[key] = change.prev
        return sorted(state.items(), key=lambda item: (item[0][2], item[0][3]))

    def changes_after(self, rv: int) -> list[Change]:
        """Changes with a version above `rv`, oldest first; 410 when some were compacted away."""
        with self.cond:
            if rv < self.history_start:
                raise gone(f"too old resource version: {rv} ({self.history_start + 1})")
            if not self._history or rv >= self.rv:
                return []
            first = self._history[0].rv
            return self._history[max(0, rv + 1 - first):]

    # --- writes ------------------------------------------------------------------------------
    def commit(self, key: Key, obj: JSON | None) -> Change:
        """Write (obj) or delete (None) one object under the next version, record and announce it."""
        with self.cond:
            bucket = self._objects.setdefault((key[0], key[1]), {})
            prev = bucket.get((key[2], key[3]))
            if obj is None and prev is None:
                raise KeyError(key)
            self.rv += 1
            if obj is None:
                assert prev is not None
                change = Change(self.rv, "DELETED", key, stamp(prev, self.rv), prev)
                del bucket[(key[2], key[3])]
            else:
                stored = stamp(obj, self.rv)
                bucket[(key[2], key[3])] = stored
                change = Change(self.rv, "MODIFIED" if prev is not None else "ADDED", key, stored, prev)
            self._history.append(change)
            if len(self._history) > self.history_limit + max(1, self.history_limit // 10):
                self._trim(self.rv - self.history_limit)
            self.cond.notify_all()
            if self.on_commit is not None:
                self.on_commit()
            return change

    def _trim(self, upto: int) -> None:
        upto = min(max(upto, self.history_start), self.rv)
        del self._history[:upto - self.history_start]
        self.history_start = upto

    def compact(self, rv: int | None = None) -> int:
        """Forget history up to `rv` (default: all of it); older versions then answer 410 Gone."""
        with self.cond:
            self._trim(self.rv if rv is None else rv)
            self.cond.notify_all()
            return self.history_start

    def close_watches(self, abrupt: bool = False) -> None:
        """End every open watch stream: cleanly, or (abrupt) by dropping the connection."""
        with self.cond:
            self.abrupt_close = abrupt
            self.watch_epoch += 1
            self.cond.notify_all()

    def request_bookmarks(self) -> None:
        """Ask every open watch that allows bookmarks to send one now."""
        with self.cond:
            self.bookmark_epoch += 1
            self.cond.notify_all()

    # --- persistence -------------------------------------------------------------------------
    def dump(self) -> JSON:
        """Objects and the version counter as JSON (history is not kept)."""
        with self.cond:
            return {"resourceVersion": self.rv,
                    "objects": [{"key": list(k), "object": self.get(k)} for k in self.keys()]}

    def load(self, data: JSON) -> None:
        """Replace the contents with a `dump()`; history starts empty at the loaded version."""
        with self.cond:
            self._objects = {}
            for entry in data.get("objects", []):
                group, plural, namespace, name = entry["key"]
                self._objects.setdefault((group, plural), {})[(namespace, name)] = entry["object"]
            self.rv = int(data.get("resourceVersion", 0))
            self._history = []
            self.history_start = self.rv
            self.cond.notify_all()

    def save_file(self, path: Path) -> None:
        """Atomically write `dump()` to `path`."""
        data = json.dumps(self.dump())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
        os.replace(tmp, path)

    def load_file(self, path: Path) -> bool:
        """Load a file written by `save_file`; False when it does not exist."""
        if not path.exists():
            return False
        self.load(json.loads(path.read_text()))
        return True
