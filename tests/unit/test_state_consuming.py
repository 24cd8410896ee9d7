"""The one consumer's registry (records reach the managers registered for their kind, every
manager applies once per update) and the one driver (in order, batched applies)."""

from __future__ import annotations

import threading

import pytest

from membrane.agent.map_managing import MapCapacityError
from membrane.agent.state_consuming import ResyncNeeded, StateConsumer
from membrane.agent.state_driving import StateDriver
from membrane.api.state_objects import Change, Kind, NamespaceState, NodeState, StateObject, StateUpdate


class Recorder:
    """A manager: records what it is told, counts applies, optionally refuses."""

    def __init__(self, log: list[str], name: str, refuse: bool = False) -> None:
        self.log, self.name, self.refuse = log, name, refuse
        self.seen: list[tuple[Kind, str, StateObject | None]] = []

    def on_update(self, kind: Kind, key: str, obj: StateObject | None) -> None:
        if key == "bad":
            raise ValueError("refused by the model")
        self.seen.append((kind, key, obj))

    def apply(self) -> None:
        self.log.append(f"apply {self.name}")
        if self.refuse:
            raise MapCapacityError("lb", 10, 5, 4)


def update(version: int, *objs: StateObject, deletes: tuple[StateObject, ...] = (), snapshot: bool = False) -> StateUpdate:
    changes = [Change((o.kind, o.key), o) for o in objs] + [Change((o.kind, o.key), None) for o in deletes]
    return StateUpdate(version, "s", snapshot, changes)


def test_records_reach_the_managers_registered_for_their_kind_and_every_manager_applies_once() -> None:
    log: list[str] = []
    nodes, namespaces, both = Recorder(log, "nodes"), Recorder(log, "namespaces"), Recorder(log, "both")
    consumer = StateConsumer("n1")
    consumer.register(Kind.NODE, nodes)
    consumer.register(Kind.NAMESPACE, namespaces)
    consumer.register(Kind.NODE, both)
    consumer.register(Kind.NAMESPACE, both)
    ns, node = NamespaceState.of("shop", {}), NodeState("n2", ("192.0.2.2",), "10.0.2.0/24")
    assert consumer.apply_update(update(1, node, ns, snapshot=True)) == 1
    assert nodes.seen == [(Kind.NODE, "n2", node)] and namespaces.seen == [(Kind.NAMESPACE, "shop", ns)]
    assert both.seen == [(Kind.NAMESPACE, "shop", ns), (Kind.NODE, "n2", node)]  # dependency order
    assert log == ["apply nodes", "apply namespaces", "apply both"]  # registration order, once each
    log.clear()
    consumer.apply_update(update(2, deletes=(node,)))
    assert nodes.seen[-1] == (Kind.NODE, "n2", None) and namespaces.seen == [(Kind.NAMESPACE, "shop", ns)]
    assert log == ["apply nodes", "apply namespaces", "apply both"]  # untouched managers apply too (retries)
    assert consumer.handled_kinds() == [Kind.NAMESPACE, Kind.NODE]


def test_a_snapshot_hands_over_only_what_differs_and_a_gap_asks_for_a_snapshot() -> None:
    log: list[str] = []
    manager = Recorder(log, "m")
    consumer = StateConsumer("n1")
    consumer.register(Kind.NAMESPACE, manager)
    a, b = NamespaceState.of("a", {}), NamespaceState.of("b", {"x": "1"})
    consumer.apply_update(update(1, a, b, snapshot=True))
    manager.seen.clear()
    consumer.apply_update(update(7, a, snapshot=True))  # a reconnect: b went, a unchanged
    assert manager.seen == [(Kind.NAMESPACE, "b", None)]
    with pytest.raises(ResyncNeeded):
        consumer.apply_update(update(9, b))  # 8 is missing
    assert consumer.version == 7


def test_a_refusing_manager_keeps_the_version_unenforced_and_the_others_still_apply() -> None:
    log: list[str] = []
    good, full = Recorder(log, "good"), Recorder(log, "full", refuse=True)
    refused: list[MapCapacityError] = []
    consumer = StateConsumer("n1", on_refused=refused.append)
    consumer.register(Kind.NODE, full)
    consumer.register(Kind.NODE, good)
    assert consumer.apply_update(update(1, NodeState("n2"), snapshot=True)) == 0
    assert log == ["apply full", "apply good"] and len(refused) == 1
    assert consumer.ledger.outcome(1) == "refused" and consumer.version == 1 and consumer.counts["refused"] == 1
    full.refuse = False
    assert consumer.apply_update(update(2, NodeState("n3"))) == 2  # the retry enforces it all


def test_an_object_a_manager_refuses_is_skipped_and_the_update_goes_on() -> None:
    log: list[str] = []
    manager = Recorder(log, "m")
    consumer = StateConsumer("n1")
    consumer.register(Kind.NODE, manager)
    assert consumer.apply_update(update(1, NodeState("bad"), NodeState("ok"), snapshot=True)) == 1
    assert [key for _, key, _ in manager.seen] == ["ok"] and consumer.counts["skipped_objects"] == 1


def test_the_driver_runs_work_in_order_on_one_thread_and_batches_the_finish() -> None:
    driver = StateDriver()
    assert driver.call(lambda: threading.current_thread().name) == threading.current_thread().name  # inline
    driver.start()
    try:
        seen: list[str] = []
        finishes: list[list[str]] = []
        gate = threading.Event()

        def finish() -> None:
            finishes.append(list(seen))

        held = threading.Event()
        driver.submit(lambda: held.set() or gate.wait())  # holds the driver while the ADDs queue up
        assert held.wait(5)  # the driver is inside the hold: the ADDs below queue behind it
        futures = [driver.submit(lambda i=i: seen.append(f"add{i}") or i, then=finish) for i in range(5)]
        gate.set()
        assert [f.result(5) for f in futures] == [0, 1, 2, 3, 4]
        assert finishes == [["add0", "add1", "add2", "add3", "add4"]]  # one finish for the queued batch
        assert driver.call(lambda: threading.current_thread().name) == "state-driver"

        def boom() -> None:
            raise ValueError("bad request")

        with pytest.raises(ValueError, match="bad request"):
            driver.call(boom, then=finish)
        assert driver.call(lambda: 42) == 42  # the driver goes on
    finally:
        driver.stop()
