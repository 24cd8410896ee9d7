"""The one driver: every change to the agent's desired state runs one at a time, in order.

Stream updates (the operator's, or the local store's), local endpoints (CNI ADD/DEL), identity
garbage collection and the periodic resync are all handed to the driver, which runs them one
after the other; so managers are only ever written by one thread at a time, nobody holds
another module's lock, and readers take each manager's own lock through its query interface.

`call(fn)` runs `fn` on the driver thread and returns its result (or raises its exception);
`submit(fn)` returns a future. Work given with `then=finish` is batched: consecutive queued
items with the same `finish` all run, then `finish()` runs once, then their callers get their
results. Concurrent CNI ADDs thus record their endpoints and share one policy apply.
`call_here(fn)` is `call` for the CNI hot path: when the driver is idle (nothing queued,
nothing running) the calling thread runs the work itself and holds the driver meanwhile
(whatever is handed over queues behind it, in order), so an ADD does not pay two thread
switches; otherwise it queues like `call`. Called from the thread running driver work, or
before `start()` (the agent's start-up, single threaded), work runs inline.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("membrane.driver")

T = TypeVar("T")


@dataclass
class _Work:
    fn: Callable[[], Any]
    then: Callable[[], object] | None
    future: Future[Any]


class StateDriver:
    def __init__(self, name: str = "state-driver") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._queue: deque[_Work] = deque()
        self._thread: threading.Thread | None = None
        self._runner: threading.Thread | None = None  # the thread running a batch now, if any
        self._stopping = False
        self.batches = 0  # finishes run (a metric of coalescing: items / batches)
        self.items = 0

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Runs what is queued, then ends the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def on_driver(self) -> bool:
        current = threading.current_thread()
        return current is self._thread or current is self._runner

    # --- handing work over ---------------------------------------------------------------------
    def submit(self, fn: Callable[[], T], then: Callable[[], object] | None = None) -> Future[T]:
        future: Future[T] = Future()
        with self._cond:
            inline = self._thread is None or self.on_driver()
            if not inline:
                if self._stopping:
                    raise RuntimeError("the state driver is stopping")
                self._queue.append(_Work(fn, then, future))
                self._cond.notify_all()
                return future
        self._run_batch([_Work(fn, then, future)])
        return future

    def call(self, fn: Callable[[], T], then: Callable[[], object] | None = None,
             timeout: float | None = None) -> T:
        return self.submit(fn, then).result(timeout)

    def call_here(self, fn: Callable[[], T], then: Callable[[], object] | None = None) -> T:
        """`call`, run by the calling thread itself when the driver is idle (see the module)."""
        with self._cond:
            idle = self._thread is not None and not self._stopping and not self._queue and self._runner is None
            if idle:
                self._runner = threading.current_thread()
        if not idle:
            return self.call(fn, then)
        future: Future[T] = Future()
        try:
            self._run_batch([_Work(fn, then, future)])
        finally:
            with self._cond:
                self._runner = None
                if self._queue:  # what queued meanwhile: the driver thread's now (else let it sleep)
                    self._cond.notify_all()
        return future.result()

    # --- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue or self._runner is not None:
                    if self._stopping and not self._queue:
                        return  # stopping, nothing left
                    self._cond.wait()
                batch = [self._queue.popleft()]
                then = batch[0].then
                while then is not None and self._queue and self._queue[0].then == then:
                    batch.append(self._queue.popleft())
                self._runner = self._thread
            try:
                self._run_batch(batch)
            finally:
                with self._cond:
                    self._runner = None

    def _run_batch(self, batch: list[_Work]) -> None:
        results: list[tuple[bool, Any]] = []
        for work in batch:
            if not work.future.set_running_or_notify_cancel():
                results.append((False, None))
                continue
            try:
                results.append((True, work.fn()))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller; the driver goes on
                results.append((False, exc))
        failure: BaseException | None = None
        then = batch[0].then
        if then is not None:
            try:
                then()
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
                failure = exc
        self.items += len(batch)
        self.batches += 1
        for work, (ok, value) in zip(batch, results, strict=True):
            if work.future.done():
                continue
            if failure is not None:
                work.future.set_exception(failure)
            elif ok:
                work.future.set_result(value)
            else:
                work.future.set_exception(value)
