"""The agent in Kubernetes mode, end to end (root): the API stand-in, a real `membrane-operator`
process and a real agent in a lab node. Objects go through the `kubernetes` client; pods are
wired by the real CNI plugin; NetworkPolicy is judged by real TCP connects between pods.

Covers: not ready (and CNI ADD "try again later") until the first snapshot; identities from
the operator in the endpoint map (INIT first, the real one in place once the pod is streamed);
a NetworkPolicy created through the API enforced; an agent restart resumes from its persisted
version (deltas, no snapshot); an operator restart leaves enforcement untouched meanwhile and
ends in a resync to the new operator's history."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from membrane_testkit.lab import netns
from membrane_testkit.lab.cluster import KubeLab
from membrane_testkit.lab.node import LabNode
from membrane_testkit.lab.traffic import CONNECT, OK_SERVER
from membrane_testkit.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, eBPF)")

SERVER = OK_SERVER


READYZ = r"""
import urllib.request, urllib.error
try:
    print(urllib.request.urlopen("http://127.0.0.1:9962/readyz", timeout=2).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print(0)
"""


def connect(src_netns: str, ip: str, port: int, timeout: float = 0.7) -> bool:
    out = netns.exec_in(src_netns, [sys.executable, "-c", CONNECT, ip, str(port), str(timeout)]).stdout.strip()
    return out == "ok"


def readyz(node: LabNode) -> int:
    return int(netns.exec_in(node.netns, [sys.executable, "-c", READYZ]).stdout.strip() or 0)


def status(node: LabNode) -> dict:
    return node.api("status")


def allow_from_web(name: str, port: int) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                  "ports": [{"port": port, "protocol": "TCP"}]}]}}


@pytest.fixture
def lab() -> Iterator[KubeLab]:
    kube = KubeLab(identity_wait=1.0)
    servers: list[subprocess.Popen[bytes]] = []
    kube.servers = servers  # type: ignore[attr-defined]
    try:
        kube.start(operator=False)
        yield kube
    finally:
        for proc in servers:
            proc.kill()
            proc.wait(5)
        nodes = [n.netns for n in kube.nodes.values()]
        kube.close()
        assert not [n for prefix in nodes for n in netns.listed(prefix)], "lab namespaces left behind"
        assert not kube.workdir.exists()


def test_agent_in_kubernetes_mode(lab: KubeLab) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    lab.create_namespace("shop", team="a")

    # --- not ready until the first snapshot; CNI ADD answers "try again later" ---------------
    node = lab.add_node(wait_ready=False)
    assert wait_for(lambda: _answers(node), timeout=90), node.log_tail()
    st = status(node)
    assert st["mode"] == "kubernetes" and not st["ready"] and not st["cluster"]["synced"]
    assert readyz(node) == 503
    early = netns.create(f"{node.netns}-early")
    try:
        code, result, raw = node.cni("ADD", "early-1", str(early), "eth0",
                                     "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=early")
        assert code != 0 and result is not None and result["code"] == 11, raw
    finally:
        netns.delete(f"{node.netns}-early")
    t0 = time.monotonic()
    lab.start_operator()
    node.wait_ready(timeout=30)
    timings["operator start to agent ready"] = time.monotonic() - t0
    st = status(node)
    assert st["ready"] and st["cluster"]["synced"] and readyz(node) == 200
    pod_cidr = IPv4Network(st["cluster"]["pod_cidr"])
    assert pod_cidr.subnet_of(IPv4Network(lab.cluster_cidr)) and st["pod_cidr"] == str(pod_cidr)

    # --- pods: identities from the operator land in the endpoint map --------------------------
    # As kubelet: the Pod object, CNI ADD (the pod is not streamed before it has an IP: the ADD
    # waits identity_wait, then the endpoint starts with INIT), then the IP in the pod's status.
    t0 = time.monotonic()
    lab.create_pod(node, "shop", "web", {"app": "web"})
    web_pod = node.add_pod("web", "shop")
    timings["CNI ADD before the identity is known"] = time.monotonic() - t0
    assert {e["ip"]: e for e in node.api("bpf.endpoints")}[web_pod.ip]["identity"] == 5  # INIT
    lab.set_pod_ip("shop", "web", web_pod.ip)
    pods = {"web": web_pod, **{name: lab.run_pod(node, "shop", name, app=name) for name in ("db", "other")}}
    assert all(IPv4Address(p.ip) in pod_cidr for p in pods.values())

    def identities_streamed() -> bool:
        rows = {r["pod"]: r["identity"] for r in node.api("endpoint.list")}
        return all(rows.get(f"shop/{n}", 0) >= 256 for n in pods)

    t0 = time.monotonic()
    assert wait_for(identities_streamed), node.api("endpoint.list")
    timings["pod IP in status to identity in endpoint map"] = time.monotonic() - t0
    allocated = lab.identities()
    rows = {r["pod"]: r for r in node.api("endpoint.list")}
    bpf = {e["ip"]: e for e in node.api("bpf.endpoints")}
    for name, pod in pods.items():
        number = rows[f"shop/{name}"]["identity"]
        assert allocated[number]["k8s:app"] == name  # the operator's MembraneIdentity
        assert bpf[pod.ip]["identity"] == number  # in the kernel's endpoint map
    assert len({rows[f"shop/{n}"]["identity"] for n in pods}) == 3

    # --- a NetworkPolicy created through the API is enforced ----------------------------------
    db_ip = pods["db"].ip
    server = netns.popen_in(pods["db"].netns, [sys.executable, "-c", SERVER, db_ip],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lab.servers.append(server)  # type: ignore[attr-defined]
    assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
    web, other = pods["web"].netns, pods["other"].netns
    assert connect(web, db_ip, 80) and connect(other, db_ip, 80)
    t0 = time.monotonic()
    lab.networking.create_namespaced_network_policy("shop", allow_from_web("db-from-web", 80))
    assert wait_for(lambda: not connect(other, db_ip, 80)), status(node)
    timings["policy created to enforced"] = time.monotonic() - t0
    assert connect(web, db_ip, 80) and not connect(web, db_ip, 81)
    assert wait_for(lambda: lab.operator_metric("membrane_operator_state_propagation_seconds_count") >= 1)

    # --- agent restart: resumes from its last version with deltas only -------------------------
    before = status(node)["cluster"]
    snapshots_sent = lab.operator_metric("membrane_operator_state_snapshots_sent_total")
    node.stop_agent()
    assert connect(web, db_ip, 80) and not connect(other, db_ip, 80)  # pinned maps, no agent
    lab.networking.create_namespaced_network_policy("shop", allow_from_web("db-from-web-81", 81))
    t0 = time.monotonic()
    node.start_agent()
    timings["agent restart to ready"] = time.monotonic() - t0
    assert wait_for(lambda: connect(web, db_ip, 81)), status(node)
    after = status(node)["cluster"]
    assert after["stream_id"] == before["stream_id"] and after["version"] > before["version"]
    assert after["snapshots"] == 0 and after["deltas"] >= 1
    assert lab.operator_metric("membrane_operator_state_snapshots_sent_total") == snapshots_sent
    assert not connect(other, db_ip, 80)

    # --- operator restart: enforcement continues meanwhile, then a resync ---------------------
    lab.stop_operator()
    lab.networking.delete_namespaced_network_policy("db-from-web-81", "shop")  # while no operator runs
    time.sleep(1.0)  # observation window: the operator stays away, the agent must keep enforcing
    st = status(node)  # the last applied state stays enforced: nothing flushed, still ready
    assert st["ready"]
    assert not connect(other, db_ip, 80) and connect(web, db_ip, 80) and connect(web, db_ip, 81)
    t0 = time.monotonic()
    lab.start_operator()
    assert wait_for(lambda: status(node)["cluster"]["stream_id"] != after["stream_id"], timeout=30)
    resynced = status(node)["cluster"]
    assert resynced["snapshots"] == 1
    assert wait_for(lambda: not connect(web, db_ip, 81))  # the policy deleted meanwhile is gone
    timings["operator restart to resynced"] = time.monotonic() - t0
    assert connect(web, db_ip, 80) and not connect(other, db_ip, 80)
    ids_now = {r["pod"]: r["identity"] for r in node.api("endpoint.list")}
    assert ids_now == {k: v["identity"] for k, v in rows.items()}  # identities survive the operator restart
    timings["total"] = time.monotonic() - started
    print("timings:", {k: round(v, 2) for k, v in timings.items()})
    errors = [line for line in node.log_path.read_text().splitlines() if '"level": "error"' in line]
    assert not errors, errors
    if os.environ.get("MEMBRANE_E2E_SHOW_LOG"):
        print(node.log_path.read_text())


def _answers(node: LabNode) -> bool:
    try:
        status(node)
        return True
    except Exception:  # noqa: BLE001 - socket not there yet
        assert node.process is not None and node.process.poll() is None, node.log_tail()
        return False
