"""The shared wait_for: returns once the condition holds, fails naming what was awaited."""

from __future__ import annotations

import itertools

import pytest

from membrane_testkit.waiting import WaitTimeout, wait_for


def test_returns_as_soon_as_the_condition_holds() -> None:
    calls = itertools.count(1)
    assert wait_for(lambda: next(calls) >= 3, timeout=5, interval=0.001) is True


def test_timeout_names_what_was_awaited() -> None:
    with pytest.raises(WaitTimeout, match=r"timed out after 0.05s waiting for the thing"):
        wait_for(lambda: False, timeout=0.05, interval=0.01, message="the thing")
    with pytest.raises(AssertionError):  # pytest reports it as a test failure
        wait_for(lambda: False, timeout=0.01, interval=0.005)


def test_listed_errors_mean_not_yet_but_the_last_try_says_why() -> None:
    calls = itertools.count()

    def flaky() -> bool:
        if next(calls) < 3:
            raise ConnectionError("not up yet")
        return True
    assert wait_for(flaky, timeout=5, interval=0.001, errors=(ConnectionError,))
    with pytest.raises(ConnectionError, match="down"):
        wait_for(lambda: (_ for _ in ()).throw(ConnectionError("down")), timeout=0.02, interval=0.005,
                 errors=(ConnectionError,))
