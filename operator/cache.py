"""The operator's in-memory copy of the watched objects, fed by the watchers.

Watchers call `replace` (after a list) and `apply` (per watch event); both record what changed
as `CacheEvent`s on a queue the controller drains, with the time the change was observed so
the state stream can measure propagation delay from there. Objects are raw JSON dicts exactly
as the API server sent them; models are built by whoever reads them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from membrane.operator.resources import Resource, object_key

JSON = dict[str, Any]


@dataclass(frozen=True)
class CacheEvent:
    resource: Resource
    type: str  # ADDED, MODIFIED, DELETED
    key: str
    obj: JSON
    seen_at: float  # time.monotonic() when the change arrived


class ObjectCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Resource, dict[str, JSON]] = {}
        self._synced: set[Resource] = set()
        self.events: queue.Queue[CacheEvent] = queue.Queue()

    def replace(self, resource: Resource, items: Iterable[JSON]) -> int:
        """Make `items` the whole content for `resource` (after a list or relist); queues the
        difference to the previous content. Returns the number of changes."""
        now = time.monotonic()
        fresh = {object_key(obj): obj for obj in items}
        with self._lock:
            old = self._objects.get(resource, {})
            events = [CacheEvent(resource, "DELETED", k, o, now)
                      for k, o in old.items() if k not in fresh]
            for key, obj in fresh.items():
                before = old.get(key)
                if before is None:
                    events.append(CacheEvent(resource, "ADDED", key, obj, now))
                elif _rv(before) != _rv(obj):
                    events.append(CacheEvent(resource, "MODIFIED", key, obj, now))
            self._objects[resource] = fresh
            self._synced.add(resource)
        for event in events:
            self.events.put(event)
        return len(events)

    def apply(self, resource: Resource, event_type: str, obj: JSON) -> None:
        key = object_key(obj)
        with self._lock:
            bucket = self._objects.setdefault(resource, {})
            if event_type == "DELETED":
                bucket.pop(key, None)
            else:
                bucket[key] = obj
        self.events.put(CacheEvent(resource, event_type, key, obj, time.monotonic()))

    def get(self, resource: Resource, key: str) -> JSON | None:
        with self._lock:
            return self._objects.get(resource, {}).get(key)

    def list(self, resource: Resource) -> list[JSON]:
        with self._lock:
            return list(self._objects.get(resource, {}).values())

    def synced(self, *resources: Resource) -> bool:
        """Whether the first list of every given resource has completed."""
        with self._lock:
            return all(r in self._synced for r in resources)


def _rv(obj: JSON) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")
