"""Every standalone state file x every damage (membrane_testkit/lab/corruption.py): rebuilt from the
kernel with nothing lost, or refused with one line naming the file and the fix and nothing torn
down. One node for the whole matrix: the agent is restarted on a damaged copy of a known-good
state dir, pods and pinned maps stay as they are between cases.

The state: Namespace + Pods a (app=db), b (role=trusted), c in batch 1, and in batch 2 (after
a restart) a NetworkPolicy that lets only role=trusted reach a: losing batch 2 would silently
drop it (c could then reach a). All of it is in state.db (the object store, the endpoint
records, IPAM, identities); standalone, it holds what nothing can rebuild, so damage to it is
refused unless only appended bytes were added.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from membrane_testkit.lab import netns
from membrane_testkit.lab.corruption import Case, Damage, Outcome, apply_case, damage_file, matrix
from membrane_testkit.lab.node import LabNode, Pod, tool
from membrane_testkit.lab.traffic import CONNECT, OK_SERVER

CASES = matrix("standalone")
REFUSED = [c for c in CASES if c.outcome is Outcome.REFUSED]
REBUILT_DAMAGES = sorted({c.damage for c in CASES if c.outcome is Outcome.REBUILT}, key=list(Damage).index)


def objects() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def pod(name: str, **labels: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": labels},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}
    batch1 = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "x"}}},
              pod("a", app="db"), pod("b", role="trusted"), pod("c", role="other")]
    batch2 = [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "db-trusted-only", "namespace": "shop"},
               "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "trusted"}}}]}]}}]
    return batch1, batch2


def connect(src: Pod, dst: Pod, timeout: float = 1.0) -> bool:
    return src.exec([sys.executable, "-c", CONNECT, dst.ip, "80", str(timeout)]).stdout.strip() == "ok"


def links(node: LabNode) -> dict[str, str]:
    """Host veth name -> ifindex in the node (the pods' wiring, as the kernel has it)."""
    out = netns.exec_in(node.netns, ["ip", "-o", "link", "show"]).stdout
    found = {}
    for line in out.splitlines():
        index, name = line.split(":")[0], line.split(":")[1].strip().split("@")[0]
        if name.startswith("mb") and len(name) == 14:
            found[name] = index
    return found


def endpoints(node: LabNode) -> list[tuple[str, str, int, int, str]]:
    return sorted((e["pod"], e["ip"], e["identity"], e["endpoint_id"], e["host_ifname"])
                  for e in node.api("endpoint.list"))


@dataclass
class Lab:
    node: LabNode
    pods: dict[str, Pod]
    good: Path  # a copy of the state dir as the agent left it
    baseline: dict[str, Any]

    @property
    def state(self) -> Path:
        return self.node.workdir / "state"

    def reset_state(self) -> None:
        shutil.rmtree(self.state)
        shutil.copytree(self.good, self.state)

    def enforced(self) -> bool:
        """The policy holds in the kernel: b reaches a, c does not."""
        return connect(self.pods["b"], self.pods["a"]) and not connect(self.pods["c"], self.pods["a"], 0.5)

    def snapshot(self) -> dict[str, Any]:
        status = self.node.api("status")
        return {"endpoints": endpoints(self.node), "store": status["store"],
                "policies": sorted(str(p["policy"]) for p in self.node.api("policy.list"))}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    import os
    node = LabNode(f"sc{os.getpid() % 10000}", pod_cidr="10.200.7.0/24")
    server = None
    try:
        node.create()
        node.start_agent()
        batch1, batch2 = objects()
        node.api("apply", objects=batch1)
        pods = {name: node.add_pod(name, namespace="shop") for name in ("a", "b", "c")}
        server = netns.popen_in(pods["a"].netns, [sys.executable, "-c", OK_SERVER, pods["a"].ip],
                                stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        node.stop_agent()
        node.start_agent()
        node.api("apply", objects=batch2)
        lab = Lab(node, pods, node.workdir / "good-state", {})
        assert lab.enforced()
        lab.baseline = lab.snapshot()
        node.stop_agent()
        assert (lab.state / "state.db").exists() and not (lab.state / "objects.json").exists()
        shutil.copytree(lab.state, lab.good)
        lab.baseline["links"] = links(node)
        yield lab
    finally:
        if server is not None:
            server.kill()
            server.wait()
        node.destroy()


def run_refusing(node: LabNode) -> subprocess.CompletedProcess[str]:
    cmd = [tool("membrane-agent"), "--node-name", node.name, "--pod-cidr", node.pod_cidr,
           "--state-dir", str(node.workdir / "state"), "--bpffs-root", str(node.pin_root),
           "--api-socket", node.socket, "--http-addr", "127.0.0.1:9962"]
    return netns.run(["ip", "netns", "exec", node.netns, *cmd], check=False, timeout=120)


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_irreplaceable_file_damaged_refuses_in_one_line(lab: Lab, case: Case) -> None:
    lab.reset_state()
    damaged = apply_case(lab.state, case)
    assert damaged, f"setup: no {case.file.pattern}"
    done = run_refusing(lab.node)
    assert done.returncode != 0, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, done.stderr[-3000:]
    assert last.startswith("membrane-agent: state file ") and "--accept-state-loss" in last, last
    named = last.split("state file ", 1)[1].split(" is damaged", 1)[0]
    assert Path(named).name == "state.db", last
    assert any(p.name.endswith(".damaged") for p in lab.state.iterdir()), sorted(lab.state.iterdir())
    # Nothing was torn down: the same links, and the kernel still enforces the policy.
    assert links(lab.node) == lab.baseline["links"]
    assert lab.enforced()


@pytest.mark.parametrize("damage", REBUILT_DAMAGES, ids=[d.value for d in REBUILT_DAMAGES])
def test_rebuildable_files_damaged_start_with_nothing_lost(lab: Lab, damage: Damage) -> None:
    """Every file whose `damage` outcome is REBUILT is damaged at once; one start rebuilds all."""
    lab.reset_state()
    cases = [c for c in CASES if c.damage is damage and c.outcome is Outcome.REBUILT]
    for case in cases:
        assert apply_case(lab.state, case), f"setup: no {case.file.pattern}"
    lab.node.start_agent()
    try:
        assert lab.snapshot() == {k: v for k, v in lab.baseline.items() if k != "links"}
        assert links(lab.node) == lab.baseline["links"]
        assert lab.enforced()
        if damage is not Damage.DELETED:
            kept = {p.name for p in lab.state.rglob("*.damaged")}
            for case in cases:
                stem = case.file.pattern.split("/")[-1].replace("*", "")
                assert any(stem in name for name in kept), (case.id, kept)
        # The rebuilt IPAM hands out no address in use.
        extra = lab.node.add_pod("e", namespace="shop")
        assert extra.ip not in {e[1] for e in lab.baseline["endpoints"]}
        lab.node.delete_pod("e")
    finally:
        lab.node.stop_agent()


def test_accept_state_loss_starts_empty_and_keeps_the_damaged_store(lab: Lab) -> None:
    lab.reset_state()
    damage_file(lab.state / "state.db", Damage.GARBAGE)
    lab.node.extra_args = ["--accept-state-loss"]
    try:
        lab.node.start_agent()
        assert lab.node.api("status")["store"]["NetworkPolicy"] == 0
        assert (lab.state / "state.db.damaged").exists()
        assert links(lab.node) == lab.baseline["links"]  # pods stay wired
        # ... with their addresses and endpoint ids, rebuilt from the kernel (identities follow
        # the labels of the Pods, which were lost with the store)
        assert [e[:2] + e[3:] for e in endpoints(lab.node)] == [e[:2] + e[3:] for e in lab.baseline["endpoints"]]
    finally:
        lab.node.stop_agent()
        lab.node.extra_args = []


@pytest.mark.parametrize("side", ["state.db-wal", "state.db-shm"])
@pytest.mark.parametrize("damage", [Damage.DELETED, Damage.GARBAGE], ids=["deleted", "garbage"])
def test_store_log_damaged_after_a_crash_loses_nothing(lab: Lab, side: str, damage: Damage) -> None:
    """kill -9 leaves SQLite's log (-wal) and its index (-shm) next to state.db with the last
    commits in them; a pod added just before is only there. Damaging them loses those commits
    from the store, and the kernel (the pod's veth alias, the endpoint map) gives them back."""
    lab.reset_state()
    lab.node.start_agent()
    extra = lab.node.add_pod("w", namespace="shop")
    try:
        before = lab.snapshot()
        assert lab.node.stop_agent(signal.SIGKILL) == -signal.SIGKILL
        path = lab.state / side
        assert path.exists(), sorted(p.name for p in lab.state.iterdir())
        damage_file(path, damage)
        lab.node.start_agent()
        assert lab.snapshot() == before
        assert lab.enforced()
        assert extra.ip in {e[1] for e in endpoints(lab.node)}
    finally:
        if lab.node.process is None:
            lab.node.start_agent()
        lab.node.delete_pod("w")
        lab.node.stop_agent()
