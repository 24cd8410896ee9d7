"""The agent's long-lived heap, kept out of the garbage collector's way, and its pauses timed.

Why: CPython's full (generation 2) collection walks every tracked container object. Once the
agent is ready its heap holds the state logic's snapshot, the store's objects (1,000 Pods and
their models), the policy state and the map plans: tens of thousands of containers that live as
long as the process. A full collection then took 80-95 ms, with the GIL held: a CNI ADD or an
`apply --wait` that happened to trigger it (or to run beside it) waited that long (the p99).

What: no automatic collection runs during the start (`hold_collections()`, main's first line,
until `settle_start()` at the end of the start): the start builds its long-lived state and a
collection could only walk it, growing, again and again (a full one during the restore of a
1,000-pod store, 60-120 ms, and ~200 young ones during the imports), with nothing to free but
the few garbage cycles of imports and set-up. `settle_start()` freezes what is there and turns
the collector back on. `freeze_heap()` moves every object tracked at that moment into the collector's permanent
generation (`gc.freeze()`), which no collection walks: later collections only walk what was
created since. It runs once the start-up state is built (end of the start) and after a large
batch (a store apply of many objects: its state is the new long-lived heap; `building_state()`
holds collections while it is built, as the start does). Objects frozen stay
freed by reference counting as before; only garbage *cycles* among frozen objects wait for an
unfreeze, so the periodic resync calls `refreeze_heap()` (unfreeze, one full collection,
freeze again) when `refreeze_due()`: at its first run after a held build (the start, a large
batch: their temporary cycles were frozen with them; with 1,000 pods the first one freed ~30,000
objects, the next ones ~0), else once per REFREEZE_SECONDS (what small changes leave behind).
That full collection (~0.1 s at 1,000 pods) is a pause at a time of our choosing, rarely.

`GcPauses` times each collection through `gc.callbacks` (per generation: count, seconds, and a
histogram's bucket counts). The callback only adds to plain lists: it runs inside whatever
allocation triggered the collection, possibly while that thread holds a metrics library lock,
so it takes no lock itself (collections never run concurrently; the GIL orders the rest). The
metrics module reads the numbers at scrape time.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Upper bounds (seconds) of the pause histogram's buckets; the last bucket is +Inf.
PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
GENERATIONS = (0, 1, 2)
LARGE_BATCH = 200  # objects in one store batch from which its state is frozen after it
REFREEZE_SECONDS = 600.0  # at most this long between two refreezes


class GcPauses:
    """Collections and their pauses per generation, counted from `install()` on."""

    def __init__(self) -> None:
        self.counts = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.buckets = [[0] * (len(PAUSE_BUCKETS) + 1) for _ in GENERATIONS]  # not cumulative
        self.longest = [0.0, 0.0, 0.0]
        self._began = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        pause = time.perf_counter() - self._began
        generation = int(info["generation"])
        self.counts[generation] += 1
        self.seconds[generation] += pause
        self.buckets[generation][bisect.bisect_left(PAUSE_BUCKETS, pause)] += 1
        if pause > self.longest[generation]:
            self.longest[generation] = pause

    def histogram(self, generation: int) -> tuple[list[tuple[str, float]], float]:
        """Cumulative buckets (Prometheus `le` labels) and the sum of seconds of one generation."""
        counts = list(self.buckets[generation])  # one copy: a collection may add meanwhile
        total = self.seconds[generation]
        cumulative: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip([*map(str, PAUSE_BUCKETS), "+Inf"], counts, strict=True):
            running += count
            cumulative.append((bound, float(running)))
        return cumulative, total


_held = False  # collections held by hold_collections() (the agent's process only)
_built = False  # a held build was frozen since the last refreeze
_refrozen_at = time.monotonic()


def hold_collections() -> None:
    """No automatic collection until settle_start() (reference counting frees as ever)."""
    global _held
    if gc.isenabled():
        gc.disable()
        _held = True


def settle_start() -> int:
    """The start's state frozen and, if hold_collections() held them, collections back on;
    returns how many objects are frozen. The start's few garbage cycles are frozen with it:
    the first periodic refreeze frees them."""
    global _held, _built
    frozen = freeze_heap()
    _built = True
    if _held:
        gc.enable()
        _held = False
    return frozen


@contextmanager
def building_state(large: bool) -> Iterator[None]:
    """With `large`: no automatic collection while the block builds state that will live long
    (a large batch; threads beside it allocate uncollected meanwhile, for its duration only),
    frozen after it, also when it failed (what it left is as long-lived). Else: nothing."""
    global _built
    if not large:
        yield
        return
    _built = True
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        freeze_heap()
        if enabled:
            gc.enable()


def freeze_heap() -> int:
    """Every object tracked now into the permanent generation; returns how many are frozen."""
    gc.freeze()
    return gc.get_freeze_count()


def refreeze_due(now: float | None = None) -> bool:
    """A held build was frozen since the last refreeze, or REFREEZE_SECONDS passed."""
    return _built or (time.monotonic() if now is None else now) - _refrozen_at >= REFREEZE_SECONDS


def refreeze_heap() -> int:
    """Frees the garbage cycles among frozen objects (one full collection), then freezes what
    lives again; returns how many are frozen."""
    global _built, _refrozen_at
    gc.unfreeze()
    gc.collect()
    _built, _refrozen_at = False, time.monotonic()
    return freeze_heap()


def frozen_objects() -> int:
    return gc.get_freeze_count()
