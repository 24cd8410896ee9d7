"""The kubeapi stand-in through the official client: CRUD, concurrency, patches, selectors, status."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from membrane_testkit.kubeapi import KubeApiServer


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    with KubeApiServer() as srv:
        yield srv


@pytest.fixture
def core(server: KubeApiServer) -> Iterator[client.CoreV1Api]:
    api_client = server.api_client()
    yield client.CoreV1Api(api_client)
    api_client.close()


def pod(name: str, labels: dict[str, str] | None = None, node: str | None = None) -> dict[str, object]:
    spec: dict[str, object] = {"containers": [{"name": "c", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def status_of(error: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(error.body)
    assert body["kind"] == "Status" and body["code"] == error.status
    return body


def test_namespaces_create_get_list_delete(core: client.CoreV1Api) -> None:
    names = {n.metadata.name for n in core.list_namespace().items}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names
    created = core.create_namespace({"metadata": {"name": "team-a", "labels": {"team": "a"}}})
    assert created.status.phase == "Active"
    assert created.metadata.labels == {"team": "a", "kubernetes.io/metadata.name": "team-a"}
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    assert core.read_namespace("team-a").metadata.uid == created.metadata.uid
    core.create_namespaced_pod("team-a", pod("p1"))
    core.delete_namespace("team-a")
    with pytest.raises(ApiException) as err:
        core.read_namespace("team-a")
    assert err.value.status == 404
    assert core.list_namespaced_pod("team-a").items == []


def test_pod_lifecycle_and_resource_versions(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_pod("default", pod("web", {"app": "web"}))
    assert created.metadata.namespace == "default"
    assert created.metadata.generation == 1
    assert created.status.phase == "Pending"
    first_rv = int(created.metadata.resource_version)
    got = core.read_namespaced_pod("web", "default")
    assert got.metadata.resource_version == created.metadata.resource_version
    got.spec.containers[0].image = "nginx"
    replaced = core.replace_namespaced_pod("web", "default", got)
    assert int(replaced.metadata.resource_version) > first_rv
    assert replaced.metadata.generation == 2
    patched = core.patch_namespaced_pod("web", "default", {"metadata": {"labels": {"tier": "front"}}})
    assert patched.metadata.labels == {"app": "web", "tier": "front"}
    assert patched.metadata.generation == 2  # metadata-only change
    listed = core.list_namespaced_pod("default")
    assert [p.metadata.name for p in listed.items] == ["web"]
    assert int(listed.metadata.resource_version) >= int(patched.metadata.resource_version)
    deleted = core.delete_namespaced_pod("web", "default")
    assert deleted.metadata.name == "web"
    with pytest.raises(ApiException) as err:
        core.read_namespaced_pod("web", "default")
    body = status_of(err.value)
    assert body["reason"] == "NotFound" and body["message"] == 'pods "web" not found'
    assert body["details"] == {"name": "web", "kind": "pods"}


def test_noop_update_does_not_write(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_pod("default", pod("same", {"a": "b"}))
    again = core.patch_namespaced_pod("same", "default", {"metadata": {"labels": {"a": "b"}}})
    assert again.metadata.resource_version == created.metadata.resource_version


def test_generate_name_and_already_exists(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_pod("default", {"metadata": {"generateName": "job-"}, "spec": {"containers": []}})
    assert first.metadata.name.startswith("job-") and len(first.metadata.name) == len("job-") + 5
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", pod(first.metadata.name))
    assert err.value.status == 409 and status_of(err.value)["reason"] == "AlreadyExists"


def test_validation_errors(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", {"metadata": {}, "spec": {}})
    body = status_of(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("default", pod("Bad_Name"))
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod("nowhere", pod("p"))
    assert err.value.status == 404 and status_of(err.value)["message"] == 'namespaces "nowhere" not found'


def test_stale_resource_version_conflicts(core: client.CoreV1Api) -> None:
    original = core.create_namespaced_pod("default", pod("p"))
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"x": "1"}}})
    original.metadata.labels = {"x": "2"}
    with pytest.raises(ApiException) as err:
        core.replace_namespaced_pod("p", "default", original)
    body = status_of(err.value)
    assert err.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in str(body["message"])
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod("p", "default", {"metadata": {"resourceVersion": original.metadata.resource_version,
                                                                 "labels": {"y": "1"}}})
    assert err.value.status == 409
    with pytest.raises(ApiException) as err:
        core.delete_namespaced_pod("p", "default", body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(resource_version=original.metadata.resource_version)))
    assert err.value.status == 409


def test_label_selectors(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("a", {"app": "web", "tier": "front", "n": "3"}))
    core.create_namespaced_pod("default", pod("b", {"app": "web", "tier": "back", "n": "7"}))
    core.create_namespaced_pod("default", pod("c", {"app": "db"}))

    def names(selector: str) -> list[str]:
        return [p.metadata.name for p in core.list_namespaced_pod("default", label_selector=selector).items]

    assert names("app=web") == ["a", "b"]
    assert names("app==web,tier!=front") == ["b"]
    assert names("app in (db, cache)") == ["c"]
    assert names("app notin (web)") == ["c"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names("n>5") == ["b"]
    assert names("app=web,tier in (front,back),!missing") == ["a", "b"]
    with pytest.raises(ApiException) as err:
        names("app in (web")
    assert err.value.status == 400


def test_field_selectors(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "other"}})
    core.create_namespaced_pod("default", pod("on-n1", node="n1"))
    core.create_namespaced_pod("default", pod("on-n2", node="n2"))
    core.create_namespaced_pod("other", pod("pending"))

    def names(selector: str) -> list[str]:
        return [p.metadata.name for p in core.list_pod_for_all_namespaces(field_selector=selector).items]

    assert names("spec.nodeName=n1") == ["on-n1"]
    assert names("spec.nodeName!=n1") == ["on-n2", "pending"]
    assert names("spec.nodeName=") == ["pending"]
    assert names("metadata.namespace=other") == ["pending"]
    assert names("metadata.name=on-n2,metadata.namespace=default") == ["on-n2"]
    assert names("status.phase=Pending") == ["on-n1", "on-n2", "pending"]
    with pytest.raises(ApiException) as err:
        names("spec.unknown=x")
    assert err.value.status == 400


def test_status_subresource(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_pod("default", {**pod("s"), "status": {"phase": "Running", "podIP": "10.0.0.9"}})
    assert created.status.phase == "Pending" and created.status.pod_ip is None  # status is reset on create
    updated = core.patch_namespaced_pod_status("s", "default", {"status": {"phase": "Running", "podIP": "10.0.0.9"},
                                                                "metadata": {"labels": {"ignored": "yes"}}})
    assert updated.status.pod_ip == "10.0.0.9" and updated.metadata.labels in (None, {})
    assert updated.metadata.generation == 1
    current = core.read_namespaced_pod("s", "default")
    current.status.pod_ip = "10.9.9.9"
    current.metadata.labels = {"kept": "yes"}
    replaced = core.replace_namespaced_pod("s", "default", current)
    assert replaced.status.pod_ip == "10.0.0.9"  # main resource ignores status
    assert replaced.metadata.labels == {"kept": "yes"}
    current = core.read_namespaced_pod_status("s", "default")
    current.status.phase = "Succeeded"
    assert core.replace_namespaced_pod_status("s", "default", current).status.phase == "Succeeded"


def test_nodes_are_cluster_scoped_and_keep_status(core: client.CoreV1Api) -> None:
    node = core.create_node({"metadata": {"name": "n1", "labels": {"zone": "a"}},
                             "spec": {"podCIDR": "10.1.0.0/24"},
                             "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}]}})
    assert node.metadata.namespace is None and node.status.addresses[0].address == "192.0.2.1"
    patched = core.patch_node_status("n1", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert patched.status.conditions[0].type == "Ready"
    assert patched.status.addresses[0].address == "192.0.2.1"
    assert [n.metadata.name for n in core.list_node(label_selector="zone=a").items] == ["n1"]
    assert core.delete_node("n1").status == "Success"


def test_json_patch_and_strategic_merge(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("j", {"a": "1"}))
    patched = core.patch_namespaced_pod("j", "default", [
        {"op": "add", "path": "/metadata/labels/b", "value": "2"},
        {"op": "remove", "path": "/metadata/labels/a"},
        {"op": "replace", "path": "/spec/containers/0/image", "value": "nginx"},
    ])
    assert patched.metadata.labels == {"b": "2"} and patched.spec.containers[0].image == "nginx"
    with pytest.raises(ApiException) as err:
        core.patch_namespaced_pod("j", "default", [{"op": "test", "path": "/metadata/labels/b", "value": "9"}])
    assert err.value.status == 422
    # strategic merge: containers merge by name, finalizers as a set
    merged = core.patch_namespaced_pod("j", "default", {"spec": {"containers": [{"name": "side", "image": "x"}]},
                                                        "metadata": {"finalizers": ["f/one"]}})
    assert [c.name for c in merged.spec.containers] == ["c", "side"]
    merged = core.patch_namespaced_pod("j", "default", {"metadata": {"finalizers": ["f/two"]}})
    assert merged.metadata.finalizers == ["f/one", "f/two"]


def test_finalizers_delay_deletion(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {"name": "cm", "finalizers": ["membrane.io/x"]}})
    core.delete_namespaced_config_map("cm", "default")
    pending = core.read_namespaced_config_map("cm", "default")
    assert pending.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map("cm", "default", [{"op": "remove", "path": "/metadata/finalizers"}])
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("cm", "default")
    assert err.value.status == 404


def test_list_pagination_and_exact_version(core: client.CoreV1Api, server: KubeApiServer) -> None:
    for index in range(5):
        core.create_namespaced_pod("default", pod(f"p{index}"))
    page = core.list_namespaced_pod("default", limit=2)
    assert [p.metadata.name for p in page.items] == ["p0", "p1"]
    assert page.metadata.remaining_item_count == 3
    snapshot_rv = page.metadata.resource_version
    core.delete_namespaced_pod("p3", "default")  # a consistent list still shows it
    rest = core.list_namespaced_pod("default", limit=10, _continue=page.metadata._continue)
    assert [p.metadata.name for p in rest.items] == ["p2", "p3", "p4"]
    assert rest.metadata.resource_version == snapshot_rv and rest.metadata._continue is None
    exact = core.list_namespaced_pod("default", resource_version=snapshot_rv, resource_version_match="Exact")
    assert len(exact.items) == 5
    server.compact()
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod("default", resource_version=snapshot_rv, resource_version_match="Exact")
    assert err.value.status == 410 and status_of(err.value)["reason"] == "Expired"
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod("default", limit=1, _continue=page.metadata._continue)
    assert err.value.status == 410
    assert len(core.list_namespaced_pod("default", resource_version="0").items) == 4


def test_discovery(server: KubeApiServer) -> None:
    api_client = server.api_client()
    try:
        assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
        groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
        assert {"networking.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "apiextensions.k8s.io"} <= groups
        resources = {r.name: r for r in client.CoreV1Api(api_client).get_api_resources().resources}
        assert resources["pods"].namespaced and not resources["nodes"].namespaced
        assert "pods/status" in resources and "watch" in resources["pods"].verbs
        lease_resources = client.CoordinationV1Api(api_client).get_api_resources()
        assert lease_resources.group_version == "coordination.k8s.io/v1"
        assert client.VersionApi(api_client).get_code().major == "1"
    finally:
        api_client.close()
