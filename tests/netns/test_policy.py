"""NetworkPolicy enforced in the kernel over real packets, applied with the standalone store."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, tool
from membrane_testkit.lab.probes import counters
from membrane_testkit.lab.traffic import CONNECT, OK_SERVER

SERVER = OK_SERVER


LOOP = r"""
import socket, sys, time, json
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ok = fail = 0; end = time.monotonic() + seconds
while time.monotonic() < end:
    try:
        s = socket.create_connection((host, port), timeout=0.5); s.recv(8); s.close(); ok += 1
    except OSError:
        fail += 1
    time.sleep(0.005)  # paces the connection attempts
print(json.dumps({"ok": ok, "fail": fail}))
"""


def ns(name: str, **labels: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, namespace: str = "shop", **labels: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [
                {"name": "http", "containerPort": 80, "protocol": "TCP"}]}]}}


def policy(name: str, ingress: list[dict[str, object]], selector: dict[str, str] | None = None) -> dict[str, object]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": selector or {"app": "db"}}, "policyTypes": ["Ingress"],
                     "ingress": ingress}}


def allow_web(port: object = 80) -> dict[str, object]:
    return policy("db-from-web", [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                   "ports": [{"port": port, "protocol": "TCP"}]}])


def connect(src_ns: str, ip: str, port: int, timeout: float = 1.0) -> bool:
    out = netns.exec_in(src_ns, [sys.executable, "-c", CONNECT, ip, str(port), str(timeout)]).stdout.strip()
    return out == "ok"


@pytest.fixture
def shop(node: LabNode):  # type: ignore[no-untyped-def]
    node.api("apply", objects=[ns("shop", team="a"), pod("web", app="web"), pod("db", app="db"),
                               pod("other", app="other")])
    pods = {name: node.add_pod(name, namespace="shop") for name in ("web", "db", "other")}
    server = subprocess.Popen(["ip", "netns", "exec", pods["db"].netns, sys.executable, "-c", SERVER, pods["db"].ip],
                              stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    yield pods
    server.kill()
    server.wait()


def test_deny_then_allow_with_counted_drops(node: LabNode, shop) -> None:  # type: ignore[no-untyped-def]
    web, db, other = shop["web"], shop["db"], shop["other"]
    assert connect(web.netns, db.ip, 80) and connect(other.netns, db.ip, 80)
    node.api("apply", objects=[policy("deny-all", [])])
    before = counters(node)
    assert not connect(web.netns, db.ip, 80)
    assert counters(node).get(("drop_policy_ingress", "ingress"), 0) > before.get(("drop_policy_ingress", "ingress"), 0)
    node.api("apply", objects=[allow_web()])
    assert connect(web.netns, db.ip, 80)          # allowed peer and port
    assert not connect(web.netns, db.ip, 81)      # other port
    assert not connect(other.netns, db.ip, 80)    # other peer
    assert connect(db.netns, web.ip, 80, 0.5) is False  # nothing listens on web: refused, not hanging
    node.api("delete", objects=[policy("deny-all", []), allow_web()])
    assert connect(other.netns, db.ip, 80)


def test_named_port_and_relabel(node: LabNode, shop) -> None:  # type: ignore[no-untyped-def]
    web, db, other = shop["web"], shop["db"], shop["other"]
    node.api("apply", objects=[allow_web("http")])
    assert connect(web.netns, db.ip, 80) and not connect(other.netns, db.ip, 80)
    node.api("apply", objects=[pod("other", app="web")])  # relabel: other becomes a web pod
    assert connect(other.netns, db.ip, 80)
    node.api("apply", objects=[ns("shop", team="b")])  # namespace relabel keeps the policy's meaning
    assert connect(other.netns, db.ip, 80) and connect(web.netns, db.ip, 80)


def test_invalid_policy_is_rejected_and_nothing_changes(node: LabNode, shop) -> None:  # type: ignore[no-untyped-def]
    web, db, other = shop["web"], shop["db"], shop["other"]
    node.api("apply", objects=[allow_web()])
    bad = policy("bad", [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}], "ports": [{"port": 70000}]}])
    done = subprocess.run([tool("membranectl"), "--socket", node.socket, "apply", "-f", "-"],
                          input=json.dumps(bad), capture_output=True, text=True)
    assert done.returncode == 1
    assert "ipBlock.cidr" in done.stderr and "port" in done.stderr, done.stderr
    assert [p["policy"] for p in node.api("policy.list")] == ["shop/db-from-web"]
    assert connect(web.netns, db.ip, 80) and not connect(other.netns, db.ip, 80)
    # A misspelled `from` would make the rule admit every source: refused by name instead.
    widened = policy("db-from-web", [{"form": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                      "ports": [{"port": 80, "protocol": "TCP"}]}])
    done = subprocess.run([tool("membranectl"), "--socket", node.socket, "apply", "-f", "-"],
                          input=json.dumps(widened), capture_output=True, text=True)
    assert done.returncode == 1
    assert "spec.ingress[0].form: unknown field" in done.stderr, done.stderr
    assert connect(web.netns, db.ip, 80) and not connect(other.netns, db.ip, 80)


def test_policy_edits_under_traffic_never_drop_allowed_nor_pass_denied(node: LabNode, shop) -> None:  # type: ignore[no-untyped-def]
    web, db, other = shop["web"], shop["db"], shop["other"]
    node.api("apply", objects=[allow_web()])
    results: dict[str, dict[str, int]] = {}

    def loop(name: str, src: str) -> None:
        out = netns.exec_in(src, [sys.executable, "-c", LOOP, db.ip, "80", "3"], timeout=30).stdout
        results[name] = json.loads(out)

    threads = [threading.Thread(target=loop, args=("web", web.netns)),
               threading.Thread(target=loop, args=("other", other.netns))]
    for thread in threads:
        thread.start()
    for i in range(20):  # edit the policy in ways that keep web->db:80 allowed, other denied
        extra = [{"from": [{"podSelector": {"matchLabels": {"app": f"x{i}"}}}], "ports": [{"port": 81 + i % 3}]}]
        node.api("apply", objects=[policy("db-from-web", [
            {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
             "ports": [{"port": 80 if i % 2 else "http"}]}] + extra)])
        time.sleep(0.1)  # paces the edits across the traffic's duration
    for thread in threads:
        thread.join()
    assert results["web"]["fail"] == 0 and results["web"]["ok"] > 50, results
    assert results["other"]["ok"] == 0, results


def test_host_may_reach_isolated_pods_by_default(node: LabNode, shop, world) -> None:  # type: ignore[no-untyped-def]
    db = shop["db"]
    node.api("apply", objects=[policy("deny-all", [])])
    assert connect(node.netns, db.ip, 80)


def test_host_traffic_can_be_restricted(make_node) -> None:  # type: ignore[no-untyped-def]
    node = make_node(extra_args=["--no-allow-host-traffic"])
    from membrane_testkit.lab import probes

    with probes.world(node):
        node.api("apply", objects=[ns("shop"), pod("db", app="db")])
        db = node.add_pod("db", namespace="shop")
        server = subprocess.Popen(["ip", "netns", "exec", db.netns, sys.executable, "-c", SERVER, db.ip],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            assert connect(node.netns, db.ip, 80)
            node.api("apply", objects=[policy("deny-all", [])])
            assert not connect(node.netns, db.ip, 80)
        finally:
            server.kill()
            server.wait()


def test_trace_answers_like_the_datapath(node: LabNode, shop) -> None:  # type: ignore[no-untyped-def]
    node.api("apply", objects=[allow_web()])
    allowed = node.api("policy.trace", src="shop/web", dst="shop/db", port="80/TCP")
    denied = node.api("policy.trace", src="shop/other", dst="shop/db", port="80/TCP")
    assert allowed["verdict"] == "allow" and any("db-from-web" in line for line in allowed["lines"])
    assert denied["verdict"] == "deny"
    to_ip = node.api("policy.trace", src="shop/web", dst=shop["db"].ip, port="http/TCP")
    assert to_ip["verdict"] == "allow"
    ids = node.api("identity.list")
    assert {r["identity"] for r in ids} >= {1, 2, 3, 4, 5, 6, 7}
    assert any("k8s:app=db" in ",".join(r["labels"]) for r in ids)
