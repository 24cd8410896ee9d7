"""Waiting on a condition: the one polling helper every test and the lab use instead of fixed sleeps.

A fixed `time.sleep` used as synchronisation is either too short on a loaded machine (flaky) or too
long everywhere else (slow). `wait_for` polls a condition until it holds or a deadline passes, and on
timeout fails with a message saying what was awaited.
"""
from __future__ import annotations

import time
from collections.abc import Callable


class WaitTimeout(AssertionError):
    """The awaited condition did not hold in time (an AssertionError, so pytest reports it as a failure)."""


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
             message: str | None = None, errors: tuple[type[Exception], ...] = ()) -> bool:
    """Poll `condition` every `interval` seconds until it returns something truthy; return True.

    Exceptions of the types in `errors` count as "not yet" (a server still starting). After
    `timeout` seconds the condition gets one last try (so a slow final poll still counts), then
    WaitTimeout is raised naming `message` (or the condition) and the timeout."""
    def holds() -> bool:
        try:
            return bool(condition())
        except errors:
            return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if holds():
            return True
        time.sleep(interval)
    if condition():  # the last try lets an error through: it says why the wait failed
        return True
    what = message or getattr(condition, "__qualname__", repr(condition))
    raise WaitTimeout(f"timed out after {timeout}s waiting for {what}")
