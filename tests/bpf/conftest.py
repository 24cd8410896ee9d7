"""Fixtures for the datapath tests: a loaded Datapath on a private pin root.

Everything created (pins under /sys/fs/bpf/membrane-test-<pid>-..., network
namespaces mbtest-<pid>-...) is removed in finalizers, even on failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

BPFFS = Path("/sys/fs/bpf")

def fresh_pin_root() -> Path:
    return BPFFS / f"membrane-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_pins(root: Path) -> None:
    """Remove a test pin root whatever is in it (it is ours by construction)."""
    if not root.exists():
        return
    for child in root.iterdir():
        child.unlink()
    root.rmdir()


@pytest.fixture
def pin_root() -> Iterator[Path]:
    root = fresh_pin_root()
    try:
        yield root
    finally:
        remove_pins(root)


@pytest.fixture(scope="module")
def datapath() -> Iterator[object]:
    """One compiled datapath per test module (compiling takes about a second)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    from membrane.agent.datapath import Datapath

    root = fresh_pin_root()
    dp = Datapath(root)
    try:
        dp.load()
        yield dp
    finally:
        dp.close()
        remove_pins(root)
