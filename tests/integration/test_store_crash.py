"""A store batch is all or nothing across a crash: a real process stopped inside a batch (the
failpoints of agent/failpoints.py, `exit` = os._exit, no cleanup) or killed with SIGKILL at a
random moment while it applies batch after batch; the store reopened afterwards holds every
acknowledged batch and, of any batch, all of its objects or none."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from membrane.agent.object_store import ObjectStore

BATCH = 20  # objects per batch

CHILD = """
import os, sys
from pathlib import Path
from membrane.agent.object_store import ObjectStore

def batch(i):
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "counter", "labels": {"batch": str(i)}}}] + [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"b{i}-{j}", "labels": {"batch": str(i)}}}
        for j in range({batch} - 1)]

store = ObjectStore(Path(sys.argv[1]))
store.load()
point, count = sys.argv[2], int(sys.argv[3])
for i in range(1, count + 1):
    if point and i == 2:
        os.environ["MEMBRANE_FAILPOINT"] = point  # armed for batch 2 only
    store.apply(batch(i))
    print(i, flush=True)  # acknowledged
"""


def child(state: Path, point: str = "", count: int = 2) -> subprocess.Popen[str]:
    env = {**os.environ, "MEMBRANE_FAILPOINTS": "1"}
    env.pop("MEMBRANE_FAILPOINT", None)
    return subprocess.Popen([sys.executable, "-c", CHILD.replace("{batch}", str(BATCH)), str(state), point, str(count)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def batches(store: ObjectStore) -> dict[int, int]:
    """batch number -> how many of its objects the store holds."""
    found: dict[int, int] = {}
    for obj in store.list("Namespace"):
        if obj.metadata.name != "counter":  # type: ignore[attr-defined]  # store objects are the k8s models
            label = int(obj.metadata.labels["batch"])  # type: ignore[attr-defined]  # store objects are the k8s models
            found[label] = found.get(label, 0) + 1
    return found


def reopened(state: Path) -> ObjectStore:
    store = ObjectStore(state)
    store.load()
    return store


@pytest.mark.parametrize(("point", "kept"), [("store.in-batch:exit", False), ("store.after-commit:exit", True)])
def test_a_crash_inside_a_batch_keeps_all_or_nothing(tmp_path: Path, point: str, kept: bool) -> None:
    proc = child(tmp_path, point)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 70, err[-2000:]  # the failpoint's exit, not an error
    assert out.split() == ["1"], out  # batch 1 acknowledged, batch 2 never answered
    store = reopened(tmp_path)
    held = store.get("Namespace", "", "counter")
    assert held is not None
    if kept:  # committed before the crash: all of it
        assert store.seq == 2 and batches(store) == {1: BATCH - 1, 2: BATCH - 1}
        assert held.metadata.labels == {"batch": "2"}  # type: ignore[attr-defined]  # a k8s model
    else:  # half its rows were written, never committed: none of it
        assert store.seq == 1 and batches(store) == {1: BATCH - 1}
        assert held.metadata.labels == {"batch": "1"}  # type: ignore[attr-defined]  # a k8s model
    store.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "after"}}])
    assert reopened(tmp_path).seq == store.seq  # and it goes on from there


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_while_batches_are_applied_keeps_every_acknowledged_one_whole(tmp_path: Path, seed: int) -> None:
    proc = child(tmp_path, count=10_000)
    assert proc.stdout is not None
    acked = 0
    deadline = time.monotonic() + random.Random(seed).uniform(0.3, 1.5)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        acked = int(line)
    proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    acked = max([acked, *(int(x) for x in rest.split())])
    assert proc.returncode == -signal.SIGKILL and acked >= 1
    store = reopened(tmp_path)
    counter = store.get("Namespace", "", "counter")
    assert counter is not None
    last = int(counter.metadata.labels["batch"])  # type: ignore[attr-defined]  # a k8s model
    assert store.seq == last and last in (acked, acked + 1)  # the one being written: all or nothing
    assert batches(store) == dict.fromkeys(range(1, last + 1), BATCH - 1)
    assert json.dumps(store.raw[("Namespace", "", "counter")])  # readable as it was applied
