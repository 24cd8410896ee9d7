"""A real agent dies inside a store batch while pods are wired: stopped at a failpoint inside the
batch (agent/failpoints.py, `exit`: no cleanup, no answer) or killed with SIGKILL at a random
moment while batches are applied. The restarted agent holds all of the batch or none of it
(never a policy without the namespace that came with it), enforces exactly that, and every wired
pod keeps its link, address, endpoint id and identity.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, Pod
from membrane_testkit.lab.traffic import CONNECT, OK_SERVER
from membrane_testkit.waiting import wait_for


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}


BASE = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "x"}}},
        pod("a", app="db"), pod("b", role="trusted"), pod("c", role="other")]
# One batch, three objects: the failpoint `store.in-batch` stops it after the first row.
BATCH = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "extra"}},
         {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
          "metadata": {"name": "db-trusted-only", "namespace": "shop"},
          "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "trusted"}}}]}]}},
         pod("d", role="later")]


def connect(src: Pod, dst: Pod, timeout: float = 1.0) -> bool:
    return src.exec([sys.executable, "-c", CONNECT, dst.ip, "80", str(timeout)]).stdout.strip() == "ok"


def links(node: LabNode) -> list[str]:
    out = netns.exec_in(node.netns, ["ip", "-o", "link", "show"]).stdout
    return sorted(line.split(":")[0] + ":" + line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                  if line.split(":")[1].strip().startswith("mb"))


def endpoints(node: LabNode) -> list[tuple[str, str, int, int, str]]:
    return sorted((e["pod"], e["ip"], e["identity"], e["endpoint_id"], e["host_ifname"])
                  for e in node.api("endpoint.list"))


@dataclass
class Lab:
    node: LabNode
    pods: dict[str, Pod]
    wired: dict[str, Any]

    def batch_applied(self) -> bool | None:
        """True: all of BATCH is stored; False: none of it; None: a part (never acceptable)."""
        names = {(o["kind"], o["metadata"]["name"]) for o in BATCH}
        held = {(kind, o["metadata"]["name"]) for kind in ("Namespace", "NetworkPolicy", "Pod")
                for o in self.node.api("get", kind=kind)}
        found = names & held
        return True if found == names else False if not found else None

    def restart_with(self, wrapper: list[str]) -> None:
        self.node.stop_agent()
        self.node.wrapper = wrapper
        self.node.start_agent()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    node = LabNode(f"cr{os.getpid() % 10000}", pod_cidr="10.200.11.0/24")
    server = None
    try:
        node.create()
        node.start_agent()
        node.api("apply", objects=BASE)
        pods = {name: node.add_pod(name, namespace="shop") for name in ("a", "b", "c")}
        server = netns.popen_in(pods["a"].netns, [sys.executable, "-c", OK_SERVER, pods["a"].ip],
                                stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield Lab(node, pods, {"endpoints": endpoints(node), "links": links(node)})
    finally:
        if server is not None:
            server.kill()
            server.wait()
        node.destroy()


@pytest.mark.parametrize(("point", "kept"), [("store.in-batch", False), ("store.after-commit", True)])
def test_a_crash_inside_a_batch_keeps_all_or_none_and_every_pod(lab: Lab, point: str, kept: bool) -> None:
    node = lab.node
    lab.restart_with(["env", "MEMBRANE_FAILPOINTS=1", f"MEMBRANE_FAILPOINT={point}:exit"])
    with pytest.raises(Exception):  # noqa: B017 - the agent dies without answering: any transport error
        node.api("apply", objects=BATCH)
    assert node.process is not None and node.process.wait(20) == 70, node.log_tail()
    node.wrapper = []
    node.start_agent()
    try:
        assert lab.batch_applied() is kept
        assert endpoints(node) == lab.wired["endpoints"]  # address, endpoint id, identity
        assert links(node) == lab.wired["links"]  # nothing re-created or torn down
        # What is stored is what is enforced: the policy came with the batch or not at all.
        assert connect(lab.pods["b"], lab.pods["a"])
        assert connect(lab.pods["c"], lab.pods["a"], 0.5) is not kept
        assert node.api("status")["store"]["NetworkPolicy"] == int(kept)
    finally:
        node.api("delete", objects=BATCH)  # the next case starts from BASE again
        assert lab.batch_applied() is False


def test_kill_9_while_batches_are_applied_keeps_all_or_none_of_each(lab: Lab) -> None:
    node = lab.node
    lab.restart_with([])
    acked: list[int] = []
    stop = threading.Event()

    def batch(i: int) -> list[dict[str, Any]]:
        return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"k{i}-{j}", "labels": {"batch": str(i)}}}
                for j in range(10)] + [{"apiVersion": "v1", "kind": "Namespace",
                                        "metadata": {"name": "counter", "labels": {"batch": str(i)}}}]

    def applier() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                node.api("apply", objects=batch(i))
            except Exception:  # noqa: BLE001 - the agent was killed: this batch was never acknowledged
                return
            acked.append(i)

    thread = threading.Thread(target=applier)
    thread.start()
    # Killed at a random moment once batches flow (a fixed delay alone may end before the first
    # ack on a loaded machine, and `acked` below would be empty).
    wait_for(lambda: acked or not thread.is_alive(), timeout=60, message="a first acknowledged batch")
    time.sleep(random.uniform(0.0, 1.0))  # where the kill lands, not synchronisation
    assert node.stop_agent(signal.SIGKILL) == -signal.SIGKILL
    stop.set()
    thread.join(30)
    assert acked, node.log_tail()
    node.start_agent()
    try:
        held: dict[int, int] = {}
        counter = None
        for obj in node.api("get", kind="Namespace"):
            labels = obj["metadata"].get("labels", {})
            if obj["metadata"]["name"] == "counter":
                counter = int(labels["batch"])
            elif "batch" in labels:
                held[int(labels["batch"])] = held.get(int(labels["batch"]), 0) + 1
        assert counter is not None and counter in (acked[-1], acked[-1] + 1)  # the one in flight: all or none
        assert held == dict.fromkeys(range(1, counter + 1), 10)
        assert endpoints(node) == lab.wired["endpoints"] and links(node) == lab.wired["links"]
        assert connect(lab.pods["c"], lab.pods["a"])  # no policy: reachable, as before the kill
        node.api("delete", objects=[o for i in range(1, counter + 1) for o in batch(i)])
    finally:
        node.stop_agent()
