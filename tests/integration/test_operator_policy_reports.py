"""How the operator reports an invalid NetworkPolicy on each Kubernetes version, against the
stand-in pretending to be that version: a Warning Event always; an `Accepted` condition on
`networkpolicies/status` only where the API has it (1.24-1.27), and no write of a `status`
the API does not have (1.28 on, where a real server drops or refuses it)."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from membrane.api.state_objects import Kind
from membrane.operator.config import OperatorConfig
from membrane.operator.policy_checking import serves_policy_status
from membrane.operator.running import Operator
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.waiting import wait_for


def make_operator(api: KubeApiServer) -> Operator:
    return Operator(OperatorConfig(
        api_server=api.url, identity="op", http_addr="127.0.0.1:0", grpc_addr="127.0.0.1:0",
        install_crds=True, leader_election=False, resync_seconds=0.1)).start()


def invalid_policy() -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "broken", "namespace": "default"},
            "spec": {"podSelector": {}, "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}]}}


def valid_policy() -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "fine", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}}


@pytest.mark.parametrize("version", ["1.27", "1.28", "1.37"])
def test_invalid_policy_reported_as_the_version_allows(version: str) -> None:
    with KubeApiServer(port=0, kubernetes_version=version) as api:
        apis = api.api_client()
        networking = client.NetworkingV1Api(apis)
        core = client.CoreV1Api(apis)
        operator = make_operator(api)
        has_status = version == "1.27"
        try:
            networking.create_namespaced_network_policy("default", invalid_policy())
            networking.create_namespaced_network_policy("default", valid_policy())

            def events() -> list:
                return [e for e in core.list_namespaced_event("default").items
                        if e.involved_object.name == "broken"]

            assert wait_for(lambda: len(events()) == 1)
            event = events()[0]
            assert event.type == "Warning" and event.reason == "InvalidNetworkPolicy"
            assert event.involved_object.kind == "NetworkPolicy"
            assert "spec.ingress[0].from[0].ipBlock.except[0]" in event.message

            def condition() -> dict | None:
                obj = client.CustomObjectsApi(apis).get_namespaced_custom_object(
                    "networking.k8s.io", "v1", "default", "networkpolicies", "broken")
                return next(iter((obj.get("status") or {}).get("conditions") or []), None)

            # the rest keeps working
            assert wait_for(lambda: (Kind.POLICY, "default/fine") in operator.state.objects())
            assert (Kind.POLICY, "default/broken") not in operator.state.objects()
            if has_status:
                assert wait_for(lambda: condition() is not None)
                cond = condition()
                assert cond is not None
                assert cond["type"] == "Accepted" and cond["status"] == "False"
                assert cond["reason"] == "InvalidNetworkPolicy"
                assert "ipBlock.except[0]" in cond["message"]
            time.sleep(0.5)  # observation window: several resync passes (0.1 s) must not report it again
            assert len(events()) == 1  # reported once, not on every pass
            assert condition() is None or has_status
            # No write the version cannot take: every request the operator made succeeded,
            # and on 1.28+ it never tried to write a policy at all.
            writes = [r for r in api.requests if r.method in ("PATCH", "PUT", "POST")]
            assert all(r.code < 400 for r in writes), [(r.method, r.target, r.code) for r in writes]
            # Status only where the version serves it; the one other policy write is the
            # enforcement annotations (metadata, every version takes them) on the valid policy.
            policy_writes = [r for r in writes if "/networkpolicies/" in r.path and r.method == "PATCH"]
            assert bool([r for r in policy_writes if r.path.endswith("/status")]) == has_status
            assert all(r.path.endswith("/status") or r.path.endswith("/networkpolicies/fine")
                       for r in policy_writes), [r.path for r in policy_writes]

            fixed = invalid_policy()
            fixed["spec"]["ingress"][0]["from"][0]["ipBlock"]["except"] = ["10.1.0.0/16"]
            networking.patch_namespaced_network_policy("broken", "default", fixed)
            assert wait_for(lambda: (Kind.POLICY, "default/broken") in operator.state.objects())
            if has_status:
                assert wait_for(lambda: (condition() or {}).get("status") == "True")
        finally:
            operator.stop()
            apis.close()


def test_discovery_decides_where_a_condition_goes() -> None:
    for version, expected in (("1.26", True), ("1.27", True), ("1.28", False), ("1.33", False)):
        with KubeApiServer(port=0, kubernetes_version=version) as api:
            apis = api.api_client()
            try:
                doc = apis.call_api("/apis/networking.k8s.io/v1", "GET", response_type="object",
                                    _return_http_data_only=True)
            finally:
                apis.close()
            assert serves_policy_status(doc) is expected, version
