"""Upgrade in place: an earlier release's agent (taken from git history) writes its state; the
current agent starts on that state dir and keeps every pod, address, identity, object and the
enforced policy, imports the JSON files into state.db and keeps them in pre-sqlite/. Two
earlier releases: the last before state.db (everything in JSON files), and the last before the
object store moved into state.db (state.db for endpoints/IPAM/identities, the object store as
`objects.json` + `objects.json.journal`).

The old agent runs from a `git archive` of that commit laid out as the installed package
(membrane/, membrane/agent, membrane/operator, membrane/bpf), first on sys.path, with this
installation's dependencies and CNI plugin (the plugin protocol did not change).
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, Pod
from membrane_testkit.lab.traffic import CONNECT, OK_SERVER
from membrane_testkit.waiting import wait_for as wait_once

# The agent may not answer yet while it starts: its errors count as "not yet".
wait_for = functools.partial(wait_once, errors=(Exception,))

REPO = Path(__file__).resolve().parents[2]
RELEASES = {
    "all-json": "d0c6da2ee63a7ed55318cba3910aeed3469aa85c",  # main just before state.db
    "json-object-store": "b4535fbbdcf68d41d2de1a120a66c7536069e7a0",  # main just before the store moved in
}
LEGACY_OBJECTS = ("objects.json", "objects.json.journal")
LAYOUT = {"membrane": "membrane", "agent": "membrane/agent", "operator": "membrane/operator", "bpf": "membrane/bpf"}
RUN_OLD = ("import sys; sys.path.insert(0, {root!r}); sys.argv = sys.argv[1:]; "
           "from membrane.agent.main import main; sys.exit(main())")


def extract(release: str, tmp_path: Path) -> Path:
    """The release's package laid out as installed, under tmp_path/previous."""
    root = tmp_path / "previous"
    root.mkdir()
    for src, dst in LAYOUT.items():
        done = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", release, src],
                              capture_output=True, timeout=60)
        if done.returncode != 0:
            pytest.skip(f"release {release[:10]} not in this clone's history: "
                        f"{done.stderr.decode().strip()[:200]}")
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
            tar.extractall(tmp_path / "extract")  # our own history (Python 3.11: no filter=)
        shutil.move(str(tmp_path / "extract" / src), root / dst)
    return root


@pytest.fixture(params=sorted(RELEASES))
def old_tree(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return extract(RELEASES[request.param], tmp_path)


@pytest.fixture
def node() -> Iterator[LabNode]:
    lab = LabNode(f"up{os.getpid() % 10000}", pod_cidr="10.200.9.0/24")
    try:
        lab.create()
        yield lab
    finally:
        lab.destroy()


def objects() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A namespace and pods a (app=db), b (role=trusted), c; then a policy: only b reaches a."""
    def pod(name: str, **labels: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": labels},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}
    return ([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "x"}}},
             pod("a", app="db"), pod("b", role="trusted"), pod("c", role="other")],
            [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "db-trusted-only", "namespace": "shop"},
              "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "trusted"}}}]}]}}])


def connect(src: Pod, dst: Pod, timeout: float = 1.0) -> bool:
    return src.exec([sys.executable, "-c", CONNECT, dst.ip, "80", str(timeout)]).stdout.strip() == "ok"


def links(node: LabNode) -> list[str]:
    """The pods' host veths with their ifindex, as the kernel has them."""
    out = netns.exec_in(node.netns, ["ip", "-o", "link", "show"]).stdout
    return sorted(line.split(":")[0] + ":" + line.split(":")[1].strip().split("@")[0] for line in out.splitlines()
                  if line.split(":")[1].strip().startswith("mb"))


def endpoints(node: LabNode) -> list[tuple[str, str, int, int, str]]:
    return sorted((e["pod"], e["ip"], e["identity"], e["endpoint_id"], e["host_ifname"])
                  for e in node.api("endpoint.list"))


def snapshot(node: LabNode) -> dict[str, Any]:
    status = node.api("status")
    return {"endpoints": endpoints(node), "store": status["store"],
            "policies": sorted(str(p["policy"]) for p in node.api("policy.list")),
            "identities": sorted((r["identity"], tuple(r["labels"])) for r in node.api("identity.list"))}


def test_upgrade_from_the_json_state_keeps_everything(old_tree: Path, node: LabNode) -> None:
    state = node.workdir / "state"
    node.wrapper = [sys.executable, "-c", RUN_OLD.format(root=str(old_tree))]
    node.start_agent()
    batch1, batch2 = objects()
    node.api("apply", objects=batch1)
    pods = {name: node.add_pod(name, namespace="shop") for name in ("a", "b", "c")}
    node.api("apply", objects=batch2)
    server = netns.popen_in(pods["a"].netns, [sys.executable, "-c", OK_SERVER, pods["a"].ip],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert connect(pods["b"], pods["a"]) and not connect(pods["c"], pods["a"], 0.5)
        before = snapshot(node)
        node.stop_agent()
        legacy = sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file())
        assert "objects.json.journal" in legacy, legacy  # the object store as that release kept it
        if not (state / "state.db").exists():  # the release before state.db
            assert "ipam.json" in legacy and "identities.json" in legacy, legacy
            assert len([p for p in legacy if p.startswith("endpoints/")]) == 3, legacy
        wired = links(node)

        node.wrapper = []  # this installation's agent
        node.start_agent()
        assert snapshot(node) == before
        assert links(node) == wired  # nothing re-created or torn down
        assert connect(pods["b"], pods["a"]) and not connect(pods["c"], pods["a"], 0.5)
        kept = sorted(str(p.relative_to(state / "pre-sqlite")) for p in (state / "pre-sqlite").rglob("*")
                      if p.is_file())
        moved = [p for p in legacy if not p.startswith("state.db")]
        assert kept == moved, kept  # every old file, kept as it was
        assert not (state / "endpoints").exists() and not (state / "ipam.json").exists()
        assert not any((state / name).exists() for name in LEGACY_OBJECTS)
        assert stat.S_IMODE((state / "state.db").stat().st_mode) == 0o600
        assert "object store imported from the previous release's files" in node.log_path.read_text()
        # The imported IPAM hands out no address in use; a restart reads state.db alone.
        extra = node.add_pod("d", namespace="shop")
        assert extra.ip not in {e[1] for e in before["endpoints"]}
        node.delete_pod("d")
        node.stop_agent()
        node.start_agent()
        after = snapshot(node)
        # d's identity stays numbered for its grace period: every earlier one is kept as it was.
        assert set(before.pop("identities")) <= set(after.pop("identities"))
        assert after == before
    finally:
        server.kill()
        server.wait()


def test_kubernetes_mode_upgrade_from_the_json_cluster_cache(tmp_path: Path) -> None:
    """The release with the JSON cluster cache runs a Kubernetes-mode node; the current agent
    starts on its state dir with the operator DOWN: the imported cache alone gives it the same
    version, endpoints, identities and enforced policy, nothing re-created."""
    from membrane_testkit.lab.cluster import KubeLab

    root = extract(RELEASES["json-object-store"], tmp_path)
    kube = KubeLab(identity_wait=1.0)
    server = None
    try:
        kube.start()
        kube.create_namespace("shop", team="a")
        node = kube.add_node(start=False)
        node.wrapper = [sys.executable, "-c", RUN_OLD.format(root=str(root))]
        node.start_agent()
        pods = {"a": kube.run_pod(node, "shop", "a", app="db"), "b": kube.run_pod(node, "shop", "b", role="trusted"),
                "c": kube.run_pod(node, "shop", "c", role="other")}
        server = netns.popen_in(pods["a"].netns, [sys.executable, "-c", OK_SERVER, pods["a"].ip],
                                stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert wait_for(lambda: all(e[2] >= 256 for e in endpoints(node))), endpoints(node)
        policy = objects()[1][0]
        kube.networking.create_namespaced_network_policy("shop", policy)
        assert wait_for(lambda: connect(pods["b"], pods["a"]) and not connect(pods["c"], pods["a"], 0.5))
        cluster = node.api("status")["cluster"]
        before = {"endpoints": endpoints(node), "version": cluster["version"], "stream_id": cluster["stream_id"],
                  "objects": cluster["objects"]}
        wired = links(node)
        node.stop_agent()
        kube.stop_operator()
        state = node.workdir / "state"
        legacy = sorted(p.name for p in state.iterdir() if p.name.startswith("cluster-"))
        assert "cluster-state.json" in legacy, sorted(p.name for p in state.iterdir())

        node.wrapper = []  # this installation's agent, the operator still down
        node.start_agent()
        cluster = node.api("status")["cluster"]
        assert {"endpoints": endpoints(node), "version": cluster["version"], "stream_id": cluster["stream_id"],
                "objects": cluster["objects"]} == before
        assert cluster["cache_damaged"] is None
        assert links(node) == wired
        assert connect(pods["b"], pods["a"]) and not connect(pods["c"], pods["a"], 0.5)
        assert sorted(p.name for p in (state / "pre-sqlite").iterdir()) == legacy
        assert not any(p.name.startswith("cluster-") for p in state.iterdir())
        assert "cluster cache imported from the previous release's files" in node.log_path.read_text()
        node.stop_agent()
        node.start_agent()  # from state.db alone
        assert node.api("status")["cluster"]["version"] == before["version"] and endpoints(node) == before["endpoints"]
    finally:
        if server is not None:
            server.kill()
            server.wait()
        kube.close()
