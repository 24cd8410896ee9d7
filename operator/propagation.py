"""Propagation delay bookkeeping: API change seen -> acked by every subscribed agent (pure).

A version is complete once every node subscribed when it was committed (or later) acked it
or a newer one. Nodes that disconnect stop counting, so one dead agent does not hold every
measurement back forever; with no subscriber at all a version measures nothing.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable


class PropagationTracker:
    def __init__(self, observe: Callable[[float], None], max_pending: int = 4096) -> None:
        self._observe = observe
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._streams: Counter[str] = Counter()  # node -> open subscriptions
        self._acked: dict[str, int] = {}
        # acked version -> how many subscribed nodes are there: the floor (the oldest version
        # every node has) is the smallest key, found without scanning every node on each ack.
        self._levels: Counter[int] = Counter()
        self._pending: dict[int, float] = {}  # version -> seen_at, in version order
        # Called (outside the lock, on the caller's thread: keep them cheap) after an ack or a
        # subscription change: the operator's enforcement annotations are recomputed then.
        self.listeners: list[Callable[[], None]] = []

    @property
    def nodes(self) -> list[str]:
        with self._lock:
            return sorted(self._streams)

    def subscribed(self, node: str) -> None:
        with self._lock:
            self._streams[node] += 1
            if self._streams[node] == 1:
                self._acked[node] = 0
                self._levels[0] += 1

    def acked_versions(self) -> dict[str, int]:
        """Subscribed node -> newest version it acked."""
        with self._lock:
            return dict(self._acked)

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener()

    def unsubscribed(self, node: str, now: float) -> None:
        self._unsubscribed(node, now)
        self._notify()

    def _unsubscribed(self, node: str, now: float) -> None:
        with self._lock:
            if node not in self._streams:
                return
            self._streams[node] -= 1
            if self._streams[node] <= 0:
                del self._streams[node]
                self._drop_level(self._acked.pop(node, 0))
            self._complete(now)

    def committed(self, version: int, seen_at: float) -> None:
        with self._lock:
            if not self._streams:
                return
            self._pending[version] = seen_at
            while len(self._pending) > self._max_pending:
                self._pending.pop(next(iter(self._pending)))

    def acked(self, node: str, version: int, now: float) -> int:
        """Record an ack; returns how many versions it completed."""
        done = self._acked_locked(node, version, now)
        self._notify()
        return done

    def _acked_locked(self, node: str, version: int, now: float) -> int:
        with self._lock:
            if node not in self._streams:
                return 0
            old = self._acked.get(node, 0)
            if version > old:
                self._acked[node] = version
                self._drop_level(old)
                self._levels[version] += 1
            return self._complete(now)

    def acked_version(self, node: str) -> int:
        with self._lock:
            return self._acked.get(node, 0)

    def _complete(self, now: float) -> int:
        if not self._streams:
            self._pending.clear()
            return 0
        if not self._pending:
            return 0
        floor = min(self._levels)
        done = 0
        while self._pending:
            version = next(iter(self._pending))  # versions arrive in order
            if version > floor:
                break
            self._observe(max(0.0, now - self._pending.pop(version)))
            done += 1
        return done

    def _drop_level(self, version: int) -> None:
        self._levels[version] -= 1
        if self._levels[version] <= 0:
            del self._levels[version]
