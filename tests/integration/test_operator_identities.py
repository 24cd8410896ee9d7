"""MembraneIdentity allocation and GC against the stand-in."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from membrane.operator.config import OperatorConfig
from membrane.operator.running import Operator
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.waiting import wait_for


def make_operator(api: KubeApiServer, name: str = "op", gc: float = 0.5) -> Operator:
    return Operator(OperatorConfig(
        api_server=api.url, identity=name, http_addr="127.0.0.1:0", grpc_addr="127.0.0.1:0",
        install_crds=True, leader_election=False, identity_gc_seconds=gc,
        resync_seconds=0.1)).start()


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(port=0) as server:
        yield server


@pytest.fixture
def apis(api: KubeApiServer) -> Iterator[client.ApiClient]:
    api_client = api.api_client()
    yield api_client
    api_client.close()


def pod(name: str, labels: dict[str, str]) -> dict:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}


def identities(apis: client.ApiClient) -> dict[int, dict[str, str]]:
    items = client.CustomObjectsApi(apis).list_cluster_custom_object(
        "membrane.io", "v1alpha1", "membraneidentities")["items"]
    return {int(i["metadata"]["name"]): i["securityLabels"] for i in items}


def test_identities_allocated_shared_stable_and_collected(api: KubeApiServer,
                                                          apis: client.ApiClient) -> None:
    core = client.CoreV1Api(apis)
    core.create_namespace({"metadata": {"name": "team-b", "labels": {"team": "b"}}})
    operator = make_operator(api)
    try:
        core.create_namespaced_pod("default", pod("web-1", {"app": "web", "pod-template-hash": "1"}))
        core.create_namespaced_pod("default", pod("web-2", {"app": "web", "pod-template-hash": "2"}))
        core.create_namespaced_pod("team-b", pod("web-3", {"app": "web"}))
        core.create_namespaced_pod("default", {**pod("host", {"app": "h"}),
                                               "spec": {"hostNetwork": True, "containers": []}})
        assert wait_for(lambda: len(identities(apis)) == 2)
        found = identities(apis)
        assert all(number >= 256 for number in found)
        by_ns = {labels["meta:namespace"]: labels for labels in found.values()}
        assert by_ns["default"]["k8s:app"] == "web"
        assert "k8s:pod-template-hash" not in by_ns["default"]  # per-rollout labels ignored
        assert by_ns["team-b"]["ns:team"] == "b"
    finally:
        operator.stop()

    operator = make_operator(api, "op-2")  # a new leader keeps every number
    try:
        assert wait_for(operator.ready)
        core.create_namespaced_pod("default", pod("web-4", {"app": "web"}))
        core.create_namespaced_pod("default", pod("db-1", {"app": "db"}))
        assert wait_for(lambda: len(identities(apis)) == 3)
        after = identities(apis)
        assert {k: after[k] for k in found} == found
        db = next(n for n, labels in after.items() if labels.get("k8s:app") == "db")
        assert db not in found

        core.delete_namespaced_pod("db-1", "default")
        time.sleep(0.2)  # observation window: passes run, the identity stays for its grace period
        assert db in identities(apis)  # still in its grace period
        assert wait_for(lambda: db not in identities(apis), timeout=5)
        assert operator.metrics.registry.get_sample_value(
            "membrane_operator_identity_gc_total") == 1
        assert set(identities(apis)) == set(found)  # identities in use are kept
    finally:
        operator.stop()
