"""Kubernetes mode under traffic: kill -9 the agent, then restart the operator, while a TCP
stream runs between two pods that a NetworkPolicy allows; not one gap, enforcement intact."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from membrane_testkit.lab.cluster import KubeLab
from membrane_testkit.lab.traffic import Stream
from membrane_testkit.waiting import wait_for


@pytest.fixture
def lab() -> Iterator[KubeLab]:
    kube = KubeLab(identity_wait=1.0)
    try:
        kube.start()
        yield kube
    finally:
        kube.close()


def test_agent_and_operator_restarts_drop_nothing(lab: KubeLab) -> None:
    lab.create_namespace("shop")
    node = lab.add_node()
    web = lab.run_pod(node, "shop", "web", app="web")
    db = lab.run_pod(node, "shop", "db", app="db")
    assert wait_for(lambda: all(r["identity"] >= 256 for r in node.api("endpoint.list")), 30)
    policy = client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="db-from-web", namespace="shop"),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels={"app": "db"}), policy_types=["Ingress"],
            ingress=[client.V1NetworkPolicyIngressRule(
                _from=[client.V1NetworkPolicyPeer(pod_selector=client.V1LabelSelector(match_labels={"app": "web"}))],
                ports=[client.V1NetworkPolicyPort(port=7000, protocol="TCP")])]))
    lab.networking.create_namespaced_network_policy("shop", policy)
    assert wait_for(lambda: node.api("policy.trace", src="shop/web", dst="shop/db", port="7000/TCP")["verdict"] == "allow"
                    and node.api("policy.trace", src="shop/db", dst="shop/web", port="7000/TCP")["verdict"] == "allow")
    stream = Stream(db.netns, db.ip, web.netns, seconds=10)
    try:
        time.sleep(1.0)
        node.stop_agent(signal.SIGKILL)
        time.sleep(1.0)
        node.start_agent()
        time.sleep(1.0)
        lab.stop_operator(signal.SIGKILL)
        time.sleep(1.0)
        lab.start_operator()
        result = stream.result()
    finally:
        stream.close()
    assert result.bytes > 2_000_000 and result.max_gap < 0.5, result
    st = node.api("status")
    assert st["ready"] and wait_for(lambda: node.api("status")["cluster"]["synced"], 30)
