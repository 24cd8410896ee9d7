"""The agent's long-lived heap out of the collector's way (agent/heap_freezing.py): frozen
objects are in no generation a collection walks, still freed by reference counting, their
garbage cycles freed by the periodic refreeze; collections timed per generation and exported.
Counts only, no timing assertions."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from membrane.agent.heap_freezing import (
    REFREEZE_SECONDS,
    GcPauses,
    building_state,
    freeze_heap,
    frozen_objects,
    hold_collections,
    refreeze_due,
    refreeze_heap,
    settle_start,
)
from membrane.agent.metrics import AgentMetrics


class Node:
    """A container object the collector tracks (and can put into a cycle)."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def in_walked_generations(obj: object) -> bool:
    return any(any(o is obj for o in gc.get_objects(generation)) for generation in (0, 1, 2))


def test_frozen_state_is_walked_by_no_collection() -> None:
    state = [Node() for _ in range(5000)]
    gc.collect()  # survivors: into generation 2, which every full collection walks
    assert in_walked_generations(state[0]) and in_walked_generations(state)
    walked_before = len(gc.get_objects(2))
    frozen = freeze_heap()
    assert frozen >= 5000 and frozen == frozen_objects() == gc.get_freeze_count()
    assert not in_walked_generations(state[0]) and not in_walked_generations(state)
    assert len(gc.get_objects(2)) < walked_before - 5000  # what a full collection walks now
    gc.collect()
    assert not in_walked_generations(state[-1])  # a full collection leaves them where they are
    assert gc.is_tracked(state[0])


def test_frozen_objects_are_still_freed_by_reference_counting() -> None:
    obj = Node()
    gone = weakref.ref(obj)
    freeze_heap()
    del obj
    assert gone() is None


def test_refreeze_frees_garbage_cycles_among_frozen_objects() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    freeze_heap()
    del a, b
    gc.collect()
    assert gone() is not None  # a frozen cycle: no collection reaches it
    kept = [Node() for _ in range(100)]
    frozen = refreeze_heap()
    assert gone() is None
    assert frozen >= 100 and not in_walked_generations(kept[0])


def test_collections_counted_per_generation_and_exported() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # once only
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        pauses.remove()
    assert pauses.counts[2] == 2 and pauses.counts[0] >= 1
    gc.collect(2)
    assert pauses.counts[2] == 2  # removed: no longer counted
    buckets, total = pauses.histogram(2)
    assert buckets[-1] == ("+Inf", 2.0) and total == pauses.seconds[2] > 0
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)  # cumulative
    metrics = AgentMetrics()
    metrics.add_gc_pauses(pauses)
    freeze_heap()
    text = generate_latest(metrics.registry).decode()
    assert 'membrane_gc_pause_seconds_count{generation="2"} 2.0' in text
    assert 'membrane_gc_pause_seconds_bucket{generation="0",le="+Inf"}' in text
    frozen_line = next(line for line in text.splitlines() if line.startswith("membrane_gc_frozen_objects "))
    assert float(frozen_line.split()[1]) > 0


def test_collections_held_during_the_start_only() -> None:
    def young_collections_while_building() -> int:
        pauses = GcPauses()
        pauses.install()
        try:
            built = [Node() for _ in range(20_000)]  # state that stays: triggers young collections
        finally:
            pauses.remove()
        del built
        return pauses.counts[0]

    assert gc.isenabled()
    assert young_collections_while_building() > 0
    try:
        hold_collections()
        assert not gc.isenabled()
        assert young_collections_while_building() == 0
        kept = Node()
        assert settle_start() > 0
        assert gc.isenabled() and not in_walked_generations(kept)
    finally:
        gc.enable()


def test_settle_start_leaves_collections_alone_when_it_held_none() -> None:
    gc.disable()  # someone else's choice (an embedding process): not ours to undo
    try:
        settle_start()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_large_batch_builds_uncollected_and_is_frozen_after() -> None:
    built: list[Node] = []
    with building_state(large=True):
        assert not gc.isenabled()
        built += [Node() for _ in range(1000)]
    assert gc.isenabled() and gc.get_freeze_count() >= 1000 and not in_walked_generations(built[0])
    gc.unfreeze()
    with pytest.raises(ValueError), building_state(large=True):
        built.append(Node())
        raise ValueError("refused batch")
    assert gc.isenabled() and not in_walked_generations(built[-1])  # back on and frozen also then
    gc.unfreeze()
    with building_state(large=False):
        assert gc.isenabled()
        built.append(Node())
    assert gc.get_freeze_count() == 0


def test_refreeze_due_after_a_held_build_or_after_a_while() -> None:
    refreeze_heap()
    assert not refreeze_due()
    assert refreeze_due(time.monotonic() + REFREEZE_SECONDS)  # small changes' cycles: rarely
    settle_start()
    assert refreeze_due()  # the start's temporary cycles were frozen with it
    refreeze_heap()
    assert not refreeze_due()
    with building_state(large=False):
        pass
    assert not refreeze_due()
    with building_state(large=True):
        pass
    assert refreeze_due()
    refreeze_heap()
