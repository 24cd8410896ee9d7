"""The kubeapi stand-in's API groups through the official client: policies, leases, CRDs, events, slices."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException

from membrane_testkit.kubeapi import KubeApiServer


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    with KubeApiServer() as srv:
        yield srv


@pytest.fixture
def api_client(server: KubeApiServer) -> Iterator[client.ApiClient]:
    api = server.api_client()
    yield api
    api.close()


IDENTITY_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "identities.membrane.io"},
    "spec": {
        "group": "membrane.io",
        "scope": "Cluster",
        "names": {"plural": "identities", "singular": "identity", "kind": "Identity", "shortNames": ["mid"]},
        "versions": [{"name": "v1alpha1", "served": True, "storage": True,
                      "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                      "subresources": {"status": {}}}],
    },
}


def test_network_policies(api_client: client.ApiClient) -> None:
    net = client.NetworkingV1Api(api_client)
    policy = client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="deny-all", labels={"p": "1"}),
        spec=client.V1NetworkPolicySpec(pod_selector=client.V1LabelSelector(), policy_types=["Ingress"]))
    created = net.create_namespaced_network_policy("default", policy)
    assert created.spec.policy_types == ["Ingress"] and created.metadata.generation == 1
    created.spec.policy_types = ["Ingress", "Egress"]
    updated = net.replace_namespaced_network_policy("deny-all", "default", created)
    assert updated.metadata.generation == 2
    assert [p.metadata.name for p in net.list_network_policy_for_all_namespaces(label_selector="p=1").items] == \
        ["deny-all"]
    assert net.delete_namespaced_network_policy("deny-all", "default").status == "Success"
    with pytest.raises(ApiException) as err:
        net.read_namespaced_network_policy("deny-all", "default")
    assert err.value.status == 404
    assert json.loads(err.value.body)["message"] == 'networkpolicies.networking.k8s.io "deny-all" not found'


def test_lease_contenders_one_wins(api_client: client.ApiClient) -> None:
    coord = client.CoordinationV1Api(api_client)
    lease = {"metadata": {"name": "membrane-operator"},
             "spec": {"holderIdentity": "", "leaseDurationSeconds": 15}}
    coord.create_namespaced_lease("kube-system", lease)
    # Both contenders read the same version, then race to take it.
    seen = [coord.read_namespaced_lease("membrane-operator", "kube-system") for _ in range(2)]
    results: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def contend(who: str, current: client.V1Lease) -> None:
        current.spec.holder_identity = who
        barrier.wait()
        try:
            coord.replace_namespaced_lease("membrane-operator", "kube-system", current)
            results[who] = "won"
        except ApiException as exc:
            results[who] = f"lost {exc.status}"

    threads = [threading.Thread(target=contend, args=(who, obj)) for who, obj in zip(("a", "b"), seen, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values()) == ["lost 409", "won"]
    winner = next(who for who, result in results.items() if result == "won")
    assert coord.read_namespaced_lease("membrane-operator", "kube-system").spec.holder_identity == winner
    # Creating a lease that exists is a 409 too (the other way two candidates race).
    with pytest.raises(ApiException) as err:
        coord.create_namespaced_lease("kube-system", lease)
    assert err.value.status == 409


def test_crd_serves_custom_objects(api_client: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    crd = ext.create_custom_resource_definition(IDENTITY_CRD)
    assert {c.type: c.status for c in crd.status.conditions}["Established"] == "True"
    groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
    assert "membrane.io" in groups
    resources = client.CustomObjectsApi(api_client).get_api_resources("membrane.io", "v1alpha1").resources
    assert {(r.name, r.namespaced) for r in resources} == {("identities", False), ("identities/status", False)}

    custom = client.CustomObjectsApi(api_client)
    args = ("membrane.io", "v1alpha1", "identities")
    body = {"apiVersion": "membrane.io/v1alpha1", "kind": "Identity", "metadata": {"name": "id-256"},
            "spec": {"labels": {"app": "web"}}, "status": {"ignored": True}}
    created = custom.create_cluster_custom_object(*args, body)
    assert created["metadata"]["generation"] == 1 and "status" not in created
    patched = custom.patch_cluster_custom_object_status(*args, "id-256", {"status": {"endpoints": 3}})
    assert patched["status"] == {"endpoints": 3}
    spec_patch = custom.patch_cluster_custom_object(*args, "id-256", {"spec": {"labels": {"app": "db"}}})
    assert spec_patch["metadata"]["generation"] == 2 and spec_patch["status"] == {"endpoints": 3}
    listed = custom.list_cluster_custom_object(*args)
    assert listed["kind"] == "IdentityList" and listed["items"][0]["kind"] == "Identity"
    stale = {**created, "spec": {"labels": {}}}
    with pytest.raises(ApiException) as err:
        custom.replace_cluster_custom_object(*args, "id-256", stale)
    assert err.value.status == 409
    deleted = custom.delete_cluster_custom_object(*args, "id-256")
    assert deleted["metadata"]["name"] == "id-256"

    ext.delete_custom_resource_definition("identities.membrane.io")
    with pytest.raises(ApiException) as err:
        custom.list_cluster_custom_object(*args)
    assert err.value.status == 404


def test_namespaced_crd_and_watch(api_client: client.ApiClient, server: KubeApiServer) -> None:
    ext = client.ApiextensionsV1Api(api_client)
    crd = {**IDENTITY_CRD, "metadata": {"name": "policies.membrane.io"},
           "spec": {**IDENTITY_CRD["spec"], "scope": "Namespaced",
                    "names": {"plural": "policies", "kind": "MembranePolicy"}}}
    ext.create_custom_resource_definition(crd)
    custom = client.CustomObjectsApi(api_client)
    args = ("membrane.io", "v1alpha1", "default", "policies")
    start = custom.list_namespaced_custom_object(*args)["metadata"]["resourceVersion"]
    custom.create_namespaced_custom_object(*args, {"metadata": {"name": "p1"}, "spec": {"deny": True}})
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object("membrane.io", "v1alpha1", "missing", "policies",
                                               {"metadata": {"name": "p1"}})
    assert err.value.status == 404
    stream = watch.Watch().stream(custom.list_namespaced_custom_object, *args, resource_version=start,
                                  timeout_seconds=1)
    events = [(e["type"], e["object"]["metadata"]["name"], e["object"]["kind"]) for e in stream]
    assert events == [("ADDED", "p1", "MembranePolicy")]
    with pytest.raises(ApiException) as err:
        ext.create_custom_resource_definition({**crd, "metadata": {"name": "wrong.membrane.io"}})
    assert err.value.status == 422


def test_events(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="web."),
        involved_object=client.V1ObjectReference(kind="Pod", name="web", namespace="default"),
        reason="PolicyApplied", message="3 rules", type="Normal",
        source=client.V1EventSource(component="membrane-agent"), count=1)
    created = core.create_namespaced_event("default", event)
    assert created.metadata.name.startswith("web.")
    core.create_namespaced_event("default", {"metadata": {"name": "other"}, "reason": "Other",
                                             "involvedObject": {"kind": "Node", "name": "n1"}})
    found = core.list_namespaced_event("default", field_selector="involvedObject.kind=Pod,reason=PolicyApplied")
    assert [e.message for e in found.items] == ["3 rules"]
    assert [e.metadata.name for e in core.list_event_for_all_namespaces(
        field_selector="source=membrane-agent").items] == [created.metadata.name]
    assert core.delete_namespaced_event(created.metadata.name, "default").status == "Success"


def test_endpoint_slices(api_client: client.ApiClient) -> None:
    disco = client.DiscoveryV1Api(api_client)
    slice_ = {"metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
              "addressType": "IPv4",
              "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": True}}],
              "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    disco.create_namespaced_endpoint_slice("default", slice_)
    listed = disco.list_namespaced_endpoint_slice("default", label_selector="kubernetes.io/service-name=web")
    assert listed.items[0].endpoints[0].addresses == ["10.0.0.5"]
    assert listed.items[0].endpoints[0].conditions.ready is True
