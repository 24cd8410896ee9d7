"""The datapath compiles on a thread of its own while the start goes on (agent/starting_ahead.py):
the caller gets control back at once, waits for the maps only when it needs them and for the
programs (loaded after the compile, on the same thread) only before it attaches; a compile or
load error reaches it (the same exception, in its own thread), so the start ends with the same
one line."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, cast

import pytest

from membrane.agent.datapath_port import DatapathPort
from membrane.agent.starting_ahead import DatapathLoading

WAIT = 30.0  # only bounds how late a broken test is reported


class SlowPort:
    """Compiles, then loads its programs, each only once the test lets it."""

    def __init__(self, compile_error: BaseException | None = None, load_error: BaseException | None = None) -> None:
        self.compile_go, self.programs_go = threading.Event(), threading.Event()
        self.compiled_on: str | None = None
        self.programs_on: str | None = None
        self.pin_root: Path | None = None
        self.compile_error, self.load_error = compile_error, load_error
        self.dp = self  # DatapathPort.dp: `loaded` once compiled
        self.loaded = False

    def compile(self, pin_root: Path | None = None) -> None:
        if not self.compile_go.wait(WAIT):
            raise AssertionError("compile ran before the caller went on (not in the background)")
        self.compiled_on, self.pin_root = threading.current_thread().name, pin_root
        if self.compile_error is not None:
            raise self.compile_error
        self.loaded = True

    def load_programs(self) -> None:
        if not self.programs_go.wait(WAIT):
            raise AssertionError("programs loaded before the caller went on")
        self.programs_on = threading.current_thread().name
        if self.load_error is not None:
            raise self.load_error


def loading(port: SlowPort) -> DatapathLoading:
    return DatapathLoading(cast(DatapathPort, port), Path("/sys/fs/bpf/mbt-unit"))


def test_the_caller_goes_on_while_the_datapath_compiles_and_waits_for_maps_then_programs() -> None:
    port = SlowPort()
    pending = loading(port)  # returns with the compile still blocked: it runs elsewhere
    assert port.compiled_on is None
    port.compile_go.set()
    assert pending.wait_maps() is cast(Any, port)  # the maps, with the programs still loading
    assert port.compiled_on == "datapath-compile" and port.pin_root == Path("/sys/fs/bpf/mbt-unit")
    assert port.programs_on is None
    port.programs_go.set()
    assert pending.wait() is cast(Any, port)
    assert port.programs_on == "datapath-compile"
    assert pending.wait() is cast(Any, port)  # waiting again: the same, no second load


def test_a_compile_error_is_raised_in_the_waiting_thread_before_any_map_is_used() -> None:
    error = RuntimeError("compiling bpf_lxc.c, bpf_overlay.c in /x failed: boom")
    port = SlowPort(compile_error=error)
    pending = loading(port)
    port.compile_go.set()
    with pytest.raises(RuntimeError) as raised:
        pending.wait_maps()
    assert raised.value is error
    with pytest.raises(RuntimeError):
        pending.wait()  # still failed: never a datapath that did not load
    assert port.programs_on is None


def test_a_program_the_verifier_refuses_is_raised_before_anything_is_attached() -> None:
    error = RuntimeError("Failed to load BPF program b'to_container': Permission denied")
    port = SlowPort(load_error=error)
    pending = loading(port)
    port.compile_go.set()
    port.programs_go.set()
    pending.wait_maps()  # the maps are fine
    with pytest.raises(RuntimeError) as raised:
        pending.wait()
    assert raised.value is error


def test_a_start_failing_before_the_wait_lets_the_compile_end() -> None:
    port = SlowPort()
    pending = loading(port)
    port.compile_go.set()
    port.programs_go.set()
    pending.settle()
    assert port.programs_on == "datapath-compile"
