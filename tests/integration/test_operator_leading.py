"""Leader election and PodCIDR assignment with whole operators against the API stand-in."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from membrane.operator.config import OperatorConfig
from membrane.operator.running import Operator
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.waiting import wait_for

ANNOTATION = "membrane.io/pod-cidr"


def make_operator(api: KubeApiServer, name: str, **overrides: object) -> Operator:
    values: dict[str, object] = dict(
        api_server=api.url, identity=name, http_addr="127.0.0.1:0", grpc_addr="127.0.0.1:0",
        install_crds=True, lease_namespace="kube-system", lease_duration_seconds=2.0,
        renew_deadline_seconds=1.5, retry_period_seconds=0.2, resync_seconds=0.2,
        cluster_cidr="10.200.0.0/16")
    config = OperatorConfig.model_validate({**values, **overrides})
    return Operator(config).start()


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(port=0) as server:
        yield server


@pytest.fixture
def core(api: KubeApiServer) -> Iterator[client.CoreV1Api]:
    api_client = api.api_client()
    yield client.CoreV1Api(api_client)
    api_client.close()


def add_node(core: client.CoreV1Api, name: str, pod_cidr: str | None = None) -> None:
    spec = {"podCIDR": pod_cidr} if pod_cidr else {}
    core.create_node({"metadata": {"name": name}, "spec": spec})


def cidrs(core: client.CoreV1Api) -> dict[str, str | None]:
    return {n.metadata.name: (n.metadata.annotations or {}).get(ANNOTATION)
            for n in core.list_node().items}


def test_one_leader_and_takeover_after_lease_expiry(api: KubeApiServer,
                                                    core: client.CoreV1Api) -> None:
    first = make_operator(api, "op-1")
    second = make_operator(api, "op-2")
    try:
        assert wait_for(lambda: first.is_leader or second.is_leader)
        time.sleep(0.6)  # observation window: several retry periods, still exactly one
        assert first.is_leader != second.is_leader
        leader, standby = (first, second) if first.is_leader else (second, first)
        for name in ("n1", "n2"):
            add_node(core, name)
        assert wait_for(lambda: all(cidrs(core).values()))
        before = cidrs(core)
        assert len(set(before.values())) == 2
        standby_writes = standby.metrics.registry.get_sample_value(
            "membrane_operator_pod_cidr_writes_total")
        assert standby_writes == 0  # only the leader writes

        killed_at = time.monotonic()
        leader.stop(release=False)  # a crash: the lease stays held until it expires
        assert wait_for(lambda: standby.is_leader, timeout=10)
        took = time.monotonic() - killed_at
        assert took >= 1.5, f"took over after {took:.2f}s, before the lease expired"
        lease = client.CoordinationV1Api(core.api_client).read_namespaced_lease(
            "membrane-operator", "kube-system")
        assert lease.spec.holder_identity == standby.config.identity
        assert lease.spec.lease_transitions >= 1

        add_node(core, "n3")
        assert wait_for(lambda: cidrs(core).get("n3") is not None)
        after = cidrs(core)
        assert {k: after[k] for k in before} == before  # failover reassigned nothing
        assert after["n3"] not in before.values()
    finally:
        first.stop()
        second.stop()


def test_graceful_stop_releases_the_lease(api: KubeApiServer) -> None:
    first = make_operator(api, "op-1", lease_duration_seconds=30.0, renew_deadline_seconds=20.0)
    assert wait_for(lambda: first.is_leader)
    second = make_operator(api, "op-2", lease_duration_seconds=30.0, renew_deadline_seconds=20.0)
    try:
        time.sleep(0.5)  # observation window: a standby's rounds must not take a held lease
        assert not second.is_leader
        started = time.monotonic()
        first.stop(release=True)
        assert wait_for(lambda: second.is_leader, timeout=5)
        assert time.monotonic() - started < 5  # no waiting for the 30 s lease
    finally:
        second.stop()


def test_pod_cidrs_survive_restarts_and_are_released_with_the_node(
        api: KubeApiServer, core: client.CoreV1Api) -> None:
    operator = make_operator(api, "op-1")
    try:
        for name in ("n1", "n2", "n3"):
            add_node(core, name)
        add_node(core, "fixed", pod_cidr="10.200.1.0/24")  # kube-controller-manager's choice
        assert wait_for(lambda: all(v for k, v in cidrs(core).items() if k != "fixed"))
    finally:
        operator.stop()
    first = cidrs(core)
    assert first["fixed"] is None  # spec.podCIDR is used as is, not annotated
    assert "10.200.1.0/24" not in first.values()
    assert len({first["n1"], first["n2"], first["n3"]}) == 3

    for round_ in range(2):  # new processes (and a new leader) never recompute a range
        operator = make_operator(api, f"op-{round_ + 2}")
        try:
            assert wait_for(lambda: operator.ready())
            time.sleep(0.3)  # observation window: the new leader's passes must not recompute a range
            assert cidrs(core) == first
        finally:
            operator.stop()

    operator = make_operator(api, "op-4")
    try:
        freed = first["n2"]
        core.delete_node("n2")
        add_node(core, "n4")
        assert wait_for(lambda: cidrs(core).get("n4") is not None)
        assert cidrs(core)["n4"] == freed  # n2's range went back to the pool
        assert operator.metrics.registry.get_sample_value(
            "membrane_operator_pod_cidrs_allocated") == 4
    finally:
        operator.stop()
