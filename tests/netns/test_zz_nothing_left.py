"""Runs last in this folder: the tests above left no namespaces, pins, work dirs or agents."""

from __future__ import annotations

from pathlib import Path

from membrane.lab import cleanup
from membrane.lab.node import LAB_DIR


def lab_agents() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"membrane-agent" in cmd and str(LAB_DIR).encode() in cmd:
                found.append(int(proc.name))
    return found


def test_nothing_left_behind() -> None:
    assert cleanup.leftovers() == {"netns": [], "pins": [], "workdirs": []}
    assert lab_agents() == []
