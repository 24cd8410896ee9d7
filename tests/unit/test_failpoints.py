"""Failpoints are off unless the environment switches them on, armed per request, and a bad
name is a CNI error naming the argument; netns_problem tells a namespace from anything else."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from agent import failpoints
from agent.netlinking import netns_problem
from membrane.cni_types import INVALID_ENVIRONMENT, CniError


def test_ignored_unless_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(failpoints.ENV, raising=False)
    with failpoints.armed({failpoints.ARG: "add.after-veth"}):
        failpoints.hit("add.after-veth")  # nothing happens


def test_armed_for_this_request_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV, "1")
    elsewhere: list[BaseException] = []

    def other_request() -> None:
        try:
            failpoints.hit("add.after-veth")
        except BaseException as exc:  # noqa: BLE001
            elsewhere.append(exc)

    with failpoints.armed({failpoints.ARG: "add.after-veth"}):
        failpoints.hit("add.after-ipam")  # another step: passes
        thread = threading.Thread(target=other_request)
        thread.start()
        thread.join()
        with pytest.raises(failpoints.FailpointError, match="failpoint add.after-veth"):
            failpoints.hit("add.after-veth")
    failpoints.hit("add.after-veth")  # disarmed after the request
    assert elsewhere == []


@pytest.mark.parametrize("value", ["add.nowhere", "add.after-veth:explode"])
def test_a_bad_failpoint_is_a_cni_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(failpoints.ENV, "1")
    with pytest.raises(CniError) as caught, failpoints.armed({failpoints.ARG: value}):
        pass
    assert caught.value.code == INVALID_ENVIRONMENT and failpoints.ARG in caught.value.msg


def test_netns_problem(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("")
    assert netns_problem(str(tmp_path / "missing")) == "does not exist"
    assert netns_problem(str(regular)) == "is not a network namespace (a regular file)"
    assert netns_problem(str(tmp_path)) == "is not a network namespace (a directory)"
    assert netns_problem("/proc/self/ns/uts") == "is a namespace, but not a network namespace"
    assert netns_problem("/proc/self/ns/net") == "is the node's own network namespace, not a pod's"
