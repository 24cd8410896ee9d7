"""The datapath compiles on a thread of its own while the start goes on (agent/starting_ahead.py):
the caller gets control back at once, waits only when it needs the maps, and a compile error
reaches it (the same exception, in its own thread) so the start ends with the same one line."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import pytest

from membrane.agent.datapath_port import DatapathPort
from membrane.agent.starting_ahead import DatapathLoading

WAIT = 30.0  # only bounds how late a broken test is reported


class SlowPort:
    """Loads only once the test lets it (a compile that takes as long as the test wants)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.go = threading.Event()
        self.loaded_on: str | None = None
        self.pin_root: Path | None = None
        self.error = error

    def load(self, pin_root: Path | None = None) -> None:
        if not self.go.wait(WAIT):
            raise AssertionError("load ran before the caller went on (not in the background)")
        self.loaded_on, self.pin_root = threading.current_thread().name, pin_root
        if self.error is not None:
            raise self.error


def loading(port: SlowPort) -> DatapathLoading:
    return DatapathLoading(cast(DatapathPort, port), Path("/sys/fs/bpf/mbt-unit"))


def test_the_caller_goes_on_while_the_datapath_loads_and_waits_for_it() -> None:
    port = SlowPort()
    pending = loading(port)  # returns with the load still blocked: it runs elsewhere
    assert port.loaded_on is None
    port.go.set()
    assert pending.wait() is cast(Any, port)
    assert port.loaded_on == "datapath-compile" and port.pin_root == Path("/sys/fs/bpf/mbt-unit")
    assert pending.wait() is cast(Any, port)  # waiting again: the same, no second load


def test_a_compile_error_is_raised_in_the_waiting_thread() -> None:
    error = RuntimeError("compiling bpf_lxc.c, bpf_overlay.c in /x failed: boom")
    port = SlowPort(error)
    pending = loading(port)
    port.go.set()
    with pytest.raises(RuntimeError) as raised:
        pending.wait()
    assert raised.value is error
    with pytest.raises(RuntimeError):
        pending.wait()  # still failed: never a datapath that did not load


def test_a_start_failing_before_the_wait_lets_the_compile_end() -> None:
    port = SlowPort()
    pending = loading(port)
    port.go.set()
    pending.settle()
    assert port.loaded_on == "datapath-compile"
