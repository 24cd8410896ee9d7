"""Services applied to a standalone agent with `membranectl apply`, as a user without Kubernetes
does: a Namespace, Pods with a named container port, a Service with a selector. The agent's
local source derives the EndpointSlice from the stored Pods (as the Kubernetes controller
would), the one state consumer hands Service and slice records to the load balancer, and real
sockets in the pods reach the backends through the ClusterIP. Nothing is fed from the test
process: this is the path `make demo` users take.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from membrane_testkit.lab import cgroups
from membrane_testkit.lab.node import LabNode, Pod
from membrane_testkit.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

PROBE = str(Path(__file__).resolve().parents[2] / "membrane_testkit" / "lab" / "service_probe.py")
VIP = "10.96.0.20"


def pod(name: str, app: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "i",
                                     "ports": [{"name": "web", "containerPort": 8080, "protocol": "TCP"}]}]}}


def web_service(selector: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"type": "ClusterIP", "clusterIP": VIP, "selector": selector,
                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"}]}}


@pytest.fixture
def lab(make_node: Any) -> Iterator[tuple[LabNode, Path]]:
    cgroup = cgroups.create(f"mbt-ss{os.getpid() % 10000}")
    try:
        node = make_node(extra_args=["--cgroup-root", str(cgroup)])
        yield node, cgroup
    finally:
        cgroups.remove(cgroup)


def test_service_applied_with_membranectl_balances_over_derived_endpoints(lab: tuple[LabNode, Path]) -> None:
    node, cgroup = lab
    node.api("apply", objects=[{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                               pod("web1", "web"), pod("web2", "web"), pod("client", "client")])
    pods: dict[str, Pod] = {n: node.add_pod(n, "shop") for n in ("web1", "web2", "client")}
    servers = []
    try:
        for name in ("web1", "web2"):
            proc = cgroups.popen_in(cgroups.child(cgroup, name), pods[name].netns,
                                    [sys.executable, "-S", "-u", PROBE, "serve", name, pods[name].ip, "8080", "5353"],
                                    stdout=subprocess.PIPE, text=True)
            servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"

        def connect(count: int) -> list[dict[str, Any]]:
            done = cgroups.run_in(cgroups.child(cgroup, "client"), pods["client"].netns,
                                  [sys.executable, "-S", "-u", PROBE, "client",
                                   json.dumps([{"op": "tcp", "ip": VIP, "port": 80, "timeout": 5}] * count)],
                                  timeout=120)
            assert done.returncode == 0, done.stderr
            return json.loads(done.stdout)  # type: ignore[no-any-return]

        node.api("apply", objects=[web_service({"app": "web"})])
        # The named targetPort resolves through each Pod's container port; both backends serve.
        wait_for(lambda: {r.get("reply") for r in connect(20)} == {"web1:8080", "web2:8080"}, timeout=30,
                 message="both derived backends answer through the ClusterIP")
        rows = node.api("service.list")
        row = next(r for r in rows if r["service"] == "shop/web")
        assert sorted(b["address"] for b in row["backends"]) == sorted(
            f"{pods[n].ip}:8080" for n in ("web1", "web2")), row

        # A selector change re-derives the slice: only web2's pod is selected now.
        node.api("apply", objects=[{**pod("web2", "web"), "metadata": {
            **pod("web2", "web")["metadata"], "labels": {"app": "web", "tier": "b"}}}])
        node.api("apply", objects=[web_service({"app": "web", "tier": "b"})])
        wait_for(lambda: {r.get("reply") for r in connect(10)} == {"web2:8080"}, timeout=30,
                 message="only the still-selected backend answers")

        # Deleting the Service refuses its address at once (nothing is listening on the VIP).
        node.api("delete", objects=[web_service({"app": "web"})])
        wait_for(lambda: all("reply" not in r for r in connect(3)), timeout=30, message="the VIP stops answering")
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
