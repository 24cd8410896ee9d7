"""Session-wide checks for the whole suite.

At the end of a run, nothing the run's lab created may be left behind: network namespaces, bpffs
pins, lab work dirs, agent processes. This replaces a test that had to run last by file name. Only
objects whose names carry a pid of this run count (lab names embed the creating pid), so helpers
running tests concurrently on one machine do not fail each other. Under pytest-xdist the check runs
once, on the controller, after every worker has finished and reported its pid.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from membrane_testkit.lab import cleanup
from membrane_testkit.lab.node import LAB_DIR
from membrane_testkit.waiting import WaitTimeout, wait_for

_run_pids: set[int] = {os.getpid()}


def _pid_pattern(pids: set[int]) -> re.Pattern[str]:
    """Lab names carry pid % 10000, pid % 100000 or the whole pid, not followed or preceded by a digit."""
    tokens = {str(v) for pid in pids for v in (pid, pid % 10000, pid % 100000)}
    return re.compile(r"(?<!\d)(" + "|".join(sorted(tokens, key=len, reverse=True)) + r")(?!\d)")


def lab_agents() -> list[tuple[int, str]]:
    """Running membrane agents started by the lab (their command line names a lab work dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"membrane-agent" in cmd and str(LAB_DIR).encode() in cmd:
                found.append((int(proc.name), cmd.replace(b"\0", b" ").decode(errors="replace")))
    return found


def leftovers_of(pids: set[int]) -> dict[str, list[str]]:
    """What the lab created under one of `pids` and is still there."""
    ours = _pid_pattern(pids)
    found = {kind: [name for name in names if ours.search(Path(name).name)]
             for kind, names in cleanup.leftovers().items()}
    found["agents"] = [f"{pid}: {cmd}" for pid, cmd in lab_agents() if ours.search(cmd)]
    return found


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: remember each worker's pid (sent in its workeroutput)."""
    pid = getattr(node, "workeroutput", {}).get("lab_pid")
    if isinstance(pid, int):
        _run_pids.add(pid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput"):  # an xdist worker: the controller checks for everyone
        config.workeroutput["lab_pid"] = os.getpid()  # type: ignore[attr-defined]
        return
    left: dict[str, list[str]] = {}

    def nothing_left() -> bool:
        left.clear()
        left.update({k: v for k, v in leftovers_of(_run_pids).items() if v})
        return not left
    try:
        wait_for(nothing_left, timeout=5.0, interval=0.2, message="lab leftovers to go")  # agents exiting
    except WaitTimeout:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"  {kind}: {', '.join(names)}" for kind, names in left.items()]
        message = "lab leftovers after the run (a test did not clean up):\n" + "\n".join(lines)
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
