"""Housekeeping's periodic resync starts one period after the agent's start (whose own resync
has just compared every map with the kernel), not at its first tick: it used to hold up the
first CNI ADDs and applies behind a read of every map. What the resync does is unchanged: a
prefilter file edit is enforced by the first periodic resync, and by a restart."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")


def _prefixes(node: Any) -> int:
    return int(node.api("status")["prefilter"]["prefixes"])


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


@pytest.mark.parametrize("period", [3600, 4])
def test_the_first_periodic_resync_is_one_period_after_start(make_node: Any, period: int) -> None:
    node = make_node(start=False)
    deny = node.workdir / "deny.txt"
    deny.write_text("203.0.113.0/24\n")
    node.extra_args = ["--prefilter-cidrs", str(deny), "--resync-seconds", str(period)]
    node.start_agent()
    assert _prefixes(node) == 1
    deny.write_text("203.0.113.0/24\n198.51.100.0/24\n")  # read again by the periodic resync only
    if period == 3600:
        time.sleep(2.5)  # housekeeping ticks every second: a resync at its first tick has run by now
        assert _prefixes(node) == 1
        node.stop_agent()
        node.start_agent()  # the start reads it
    _wait(lambda: _prefixes(node) == 2, 60, "the deny file's edit enforced")
    gc = node.api("status")["gc"]  # frozen at the start; refrozen after each periodic resync
    assert gc["frozen_objects"] > 10_000 and gc["enabled"]  # held during the start only
    if period == 4:
        _wait(lambda: node.api("status")["gc"]["refreezes"] >= 1, 60, "the heap refrozen after the resync")
        assert node.api("status")["gc"]["frozen_objects"] > 10_000
