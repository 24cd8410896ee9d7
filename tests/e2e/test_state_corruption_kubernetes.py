"""Kubernetes mode: the cluster state cache x every damage (membrane_testkit/lab/corruption.py).

One cluster, one node, pods a (app=db), b (role=trusted), c and a NetworkPolicy that lets only
role=trusted reach a. For each case the agent restarts on a damaged copy of its cache while the
operator is DOWN: the kernel keeps enforcing exactly what it enforced (c still cannot reach a,
no link is touched) and nothing older or empty is written in its place; then the operator
comes back and the agent ends with the same endpoints and the same enforcement, its cache
rewritten from the operator's snapshot. Each case starts from the state the previous one left
(one delta more): the kernel's witness always matches the good copy.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from membrane_testkit.lab import netns
from membrane_testkit.lab.cluster import KubeLab
from membrane_testkit.lab.corruption import Case, Damage, Outcome, apply_case, matrix
from membrane_testkit.lab.node import LabNode, Pod
from membrane_testkit.lab.traffic import CONNECT, OK_SERVER
from membrane_testkit.waiting import wait_for as wait_once

# The agent may not answer yet while it starts: its errors count as "not yet".
wait_for = functools.partial(wait_once, errors=(Exception,))

CASES = matrix("kubernetes")


def connect(src: Pod, dst: Pod, timeout: float = 1.0) -> bool:
    return src.exec([sys.executable, "-c", CONNECT, dst.ip, "80", str(timeout)]).stdout.strip() == "ok"


def links(node: LabNode) -> list[str]:
    out = netns.exec_in(node.netns, ["ip", "-o", "link", "show"]).stdout
    return sorted(line.split(":")[0] + ":" + line.split(":")[1].strip().split("@")[0]
                  for line in out.splitlines() if line.split(":")[1].strip().startswith("mb"))


@dataclass
class Lab:
    kube: KubeLab
    node: LabNode
    pods: dict[str, Pod]
    good: Path
    baseline: dict[str, Any] = field(default_factory=dict)
    spares: int = 0

    @property
    def state(self) -> Path:
        return self.node.workdir / "state"

    def enforced(self) -> bool:
        return connect(self.pods["b"], self.pods["a"]) and not connect(self.pods["c"], self.pods["a"], 0.5)

    def endpoints(self) -> list[tuple[str, str, int]]:
        return sorted((e["pod"], e["ip"], e["identity"]) for e in self.node.api("endpoint.list"))


def settle(lab: Lab) -> None:
    """One more delta (a spare namespace) after the snapshot, then stop
    agent and operator and keep the state dir as the good copy: the kernel's witness matches it
    (each case's operator restart starts a new stream)."""
    lab.spares += 1
    before = lab.node.api("status")["cluster"]["version"]
    lab.kube.create_namespace(f"spare{lab.spares}")
    assert wait_for(lambda: lab.node.api("status")["cluster"]["version"] > before)
    lab.node.stop_agent()
    lab.kube.stop_operator()
    assert (lab.state / "state.db").exists() and not (lab.state / "cluster-state.json").exists()
    shutil.rmtree(lab.good, ignore_errors=True)
    shutil.copytree(lab.state, lab.good)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    kube = KubeLab(identity_wait=1.0)
    server = None
    try:
        kube.start()
        kube.create_namespace("shop", team="a")
        node = kube.add_node()
        pods = {"a": kube.run_pod(node, "shop", "a", app="db"), "b": kube.run_pod(node, "shop", "b", role="trusted"),
                "c": kube.run_pod(node, "shop", "c", role="other")}
        server = netns.popen_in(pods["a"].netns, [sys.executable, "-c", OK_SERVER, pods["a"].ip],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        lab = Lab(kube, node, pods, node.workdir / "good-state")
        assert wait_for(lambda: all(i >= 256 for _, _, i in lab.endpoints())), lab.endpoints()
        kube.networking.create_namespaced_network_policy("shop", {
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "db-trusted-only", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "trusted"}}}]}]}})
        assert wait_for(lab.enforced), node.api("status")
        lab.baseline = {"endpoints": lab.endpoints(), "links": links(node)}
        settle(lab)
        yield lab
    finally:
        if server is not None:
            server.kill()
            server.wait()
        kube.close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_damaged_cluster_cache_holds_the_maps_then_refetches(lab: Lab, case: Case) -> None:
    assert case.outcome is Outcome.REBUILT
    shutil.rmtree(lab.state)
    shutil.copytree(lab.good, lab.state)
    assert apply_case(lab.state, case), f"setup: no {case.file.pattern}"
    node = lab.node
    node.start_agent(wait_ready=False)
    try:
        assert wait_for(lambda: node.api("status")["cluster"] is not None), node.log_tail()
        cluster = node.api("status")["cluster"]
        damaged = cluster["cache_damaged"]
        # Only bytes appended after intact content are dropped quietly (a torn tail); every
        # other damage is detected (by parsing or by the kernel's witness), never read as less.
        assert (damaged is None) == (case.damage is Damage.APPENDED), (case.id, damaged)
        if damaged is not None:  # set aside: not ready, nothing written, the kernel as it was
            assert not node.api("status")["ready"]
            assert case.file.pattern.split(".")[0] in damaged or "cluster-" in damaged, damaged
        time.sleep(0.5)  # the agent's start-up and first housekeeping round had their chance
        assert links(node) == lab.baseline["links"]
        assert lab.enforced(), node.log_tail()
        lab.kube.start_operator()
        try:
            node.wait_ready(timeout=60)
            # The operator's new stream always starts with a snapshot (the agent resumes from
            # another stream, or from nothing).
            assert wait_for(lambda: node.api("status")["cluster"]["snapshots"] >= 1), node.api("status")
            assert wait_for(lambda: lab.endpoints() == lab.baseline["endpoints"]), lab.endpoints()
            assert lab.enforced()
            assert links(node) == lab.baseline["links"]
            assert (lab.state / "state.db").exists()
            settle(lab)
        finally:
            lab.kube.stop_operator()
    finally:
        node.stop_agent()
