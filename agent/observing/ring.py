"""A bounded ring of recent flows that readers can follow.

Every flow gets a sequence number; slot `seq % capacity` holds it until it is overwritten.
Readers remember the next sequence they want, so a follower that fell behind learns exactly how
many flows it missed (`read_after` returns the gap) instead of silently skipping them.

One writer (the ring buffer poll thread) and any number of readers (gRPC streams): a lock
guards the slots, a condition wakes followers. Writes are O(1) and never wait for readers.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from membrane.flows import Flow

DEFAULT_CAPACITY = 4096


class FlowRing:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("flow ring capacity must be at least 1")
        self.capacity = capacity
        self._slots: list[Flow | None] = [None] * capacity
        self._next = 0  # sequence number the next flow gets (= flows ever added)
        self._cond = threading.Condition(threading.Lock())

    # --- writer ---------------------------------------------------------------------------
    def add(self, flow: Flow) -> None:
        with self._cond:
            self._slots[self._next % self.capacity] = flow
            self._next += 1
            self._cond.notify_all()

    def extend(self, flows: Sequence[Flow]) -> None:
        """Add a batch under one lock round (a poll returns many records at once)."""
        if not flows:
            return
        with self._cond:
            cap, slots, seq = self.capacity, self._slots, self._next
            for flow in flows:
                slots[seq % cap] = flow
                seq += 1
            self._next = seq
            self._cond.notify_all()

    # --- readers --------------------------------------------------------------------------
    @property
    def seen(self) -> int:
        """Flows ever added (the next sequence number)."""
        return self._next

    @property
    def held(self) -> int:
        return min(self._next, self.capacity)

    @property
    def oldest(self) -> int:
        """Sequence number of the oldest flow still held."""
        return self._next - self.held

    def snapshot(self) -> tuple[int, list[Flow]]:
        """(next sequence, every held flow oldest first)."""
        with self._cond:
            start = self._next - min(self._next, self.capacity)
            return self._next, self._range(start, self._next)

    def read_after(self, seq: int, limit: int = 1024) -> tuple[int, int, list[Flow]]:
        """Flows from sequence `seq` on (at most `limit`): (missed, next seq, flows).

        `missed` counts flows overwritten before this reader got to them."""
        with self._cond:
            oldest = self._next - min(self._next, self.capacity)
            missed = max(0, oldest - seq)
            start = max(seq, oldest)
            end = min(self._next, start + limit)
            return missed, end, self._range(start, end)

    def wait(self, seq: int, timeout: float) -> bool:
        """Block until a flow with sequence >= `seq` exists (True) or the timeout passes."""
        with self._cond:
            return self._cond.wait_for(lambda: self._next > seq, timeout)

    def wake_all(self) -> None:
        """Wake every waiting follower (server shutting down, stream cancelled)."""
        with self._cond:
            self._cond.notify_all()

    def _range(self, start: int, end: int) -> list[Flow]:
        cap, slots = self.capacity, self._slots
        out = [slots[s % cap] for s in range(start, end)]
        return out  # type: ignore[return-value]  # slots in [oldest, next) are always set
