"""`StateDriver.call_here`: an idle driver's work runs on the calling thread (the CNI hot path
skips two thread switches), and the driver's rules hold all the same: one piece of work at a
time, in the order handed over, batches sharing one finish, reentrant calls inline."""

from __future__ import annotations

import random
import threading
import time

import pytest

from membrane.agent.state_driving import StateDriver


def test_an_idle_driver_runs_the_work_on_the_calling_thread() -> None:
    driver = StateDriver()
    driver.start()
    try:
        here = threading.current_thread().name
        finishes: list[str] = []
        assert driver.call_here(lambda: threading.current_thread().name,
                                then=lambda: finishes.append(threading.current_thread().name)) == here
        assert finishes == [here]  # its finish too
        assert driver.call(lambda: threading.current_thread().name) == "state-driver"  # call is unchanged
        # Reentrant: work run here that hands work to the driver runs it inline (no deadlock).
        assert driver.call_here(lambda: driver.call(lambda: threading.current_thread().name)) == here
        assert driver.call_here(lambda: driver.on_driver()) is True
        assert not driver.on_driver()

        def boom() -> None:
            raise ValueError("bad request")
        with pytest.raises(ValueError, match="bad request"):
            driver.call_here(boom)
        assert driver.call(lambda: 42) == 42  # released after a failure: the driver goes on
    finally:
        driver.stop()


def test_a_busy_driver_queues_the_work_behind_what_it_holds() -> None:
    driver = StateDriver()
    driver.start()
    try:
        gate, held, order = threading.Event(), threading.Event(), []
        def hold() -> None:
            held.set()
            gate.wait(5)
            order.append("held")
        first = driver.submit(hold)
        assert held.wait(5)
        result: list[str] = []
        caller = threading.Thread(target=lambda: result.append(
            driver.call_here(lambda: order.append("here") or threading.current_thread().name)))
        caller.start()
        time.sleep(0.05)
        assert order == []  # it waits for the driver
        gate.set()
        caller.join(5)
        first.result(5)
        assert order == ["held", "here"] and result == ["state-driver"]
    finally:
        driver.stop()


def test_work_handed_over_while_a_caller_holds_the_driver_runs_after_it_in_order() -> None:
    driver = StateDriver()
    driver.start()
    try:
        inside, release, order = threading.Event(), threading.Event(), []

        def long() -> str:
            inside.set()
            release.wait(5)
            order.append("here")
            return threading.current_thread().name

        finishes: list[list[str]] = []
        caller_result: list[str] = []
        caller = threading.Thread(target=lambda: caller_result.append(driver.call_here(long)), name="cni")
        caller.start()
        assert inside.wait(5)
        def finish() -> None:
            finishes.append(list(order))
        queued = [driver.submit(lambda i=i: order.append(f"q{i}"), then=finish) for i in range(3)]
        later: list[str] = []
        second = threading.Thread(target=lambda: later.append(driver.call_here(
            lambda: order.append("second") or threading.current_thread().name)))
        second.start()  # something is queued: it queues too, never runs ahead
        time.sleep(0.05)
        assert order == []
        release.set()
        caller.join(5)
        second.join(5)
        for f in queued:
            f.result(5)
        assert caller_result == ["cni"]
        assert order == ["here", "q0", "q1", "q2", "second"]
        assert finishes == [["here", "q0", "q1", "q2"]]  # the queued batch shared one finish
        assert later == ["state-driver"]
    finally:
        driver.stop()


def test_never_two_pieces_of_work_at_once_and_each_callers_work_in_its_order() -> None:
    driver = StateDriver()
    driver.start()
    running, overlaps = [0], []
    done: dict[int, list[int]] = {}
    lock = threading.Lock()

    def work(who: int, n: int) -> int:
        with lock:
            running[0] += 1
            if running[0] > 1:
                overlaps.append((who, n))
        time.sleep(random.random() / 2000)
        done.setdefault(who, []).append(n)
        with lock:
            running[0] -= 1
        return n

    def client(who: int) -> None:
        rng = random.Random(who)
        for n in range(40):
            pick = rng.randrange(3)
            if pick == 0:
                assert driver.call_here(lambda: work(who, n)) == n
            elif pick == 1:
                assert driver.call(lambda: work(who, n), then=lambda: None) == n
            else:
                assert driver.submit(lambda: work(who, n)).result(10) == n
    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not overlaps
        assert done == {i: list(range(40)) for i in range(6)}
    finally:
        driver.stop()


def test_before_start_and_after_stop() -> None:
    driver = StateDriver()
    assert driver.call_here(lambda: threading.current_thread().name) == threading.current_thread().name  # start-up
    driver.start()
    driver.stop()
    with pytest.raises(RuntimeError, match="stopping"):
        driver.call_here(lambda: 1)
