"""The operator's Kubernetes adapter (operator/kube_client.py) against the API stand-in: typed
addressing by `Resource`, JSON in and out, and its two error types: `KubeError` for an answer
with an error status (404/409/410 named, the Status message and Retry-After kept) and
`KubeUnreachable` for no answer at all."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes.client.rest import ApiException

from membrane.operator.kube_client import KubeClient, KubeError, KubeUnreachable, connect
from membrane.operator.resources import CONFIG_MAPS, CSRS, IDENTITIES, LEASES, NETWORK_POLICIES, NODES, PODS
from membrane_testkit.kubeapi import KubeApiServer


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(port=0) as server:
        yield server


@pytest.fixture
def kube(api: KubeApiServer) -> Iterator[KubeClient]:
    kube = connect(api.url)
    yield kube
    kube.close()


def node(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def test_paths_of_namespaced_and_cluster_scoped_kinds() -> None:
    assert NODES.object_path("n1") == "/api/v1/nodes/n1"
    assert PODS.object_path("p", "shop", "status") == "/api/v1/namespaces/shop/pods/p/status"
    assert LEASES.collection_path("kube-system") == "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases"
    assert CSRS.object_path("c", subresource="approval") == \
        "/apis/certificates.k8s.io/v1/certificatesigningrequests/c/approval"
    assert IDENTITIES.object_path("300") == "/apis/membrane.io/v1alpha1/membraneidentities/300"
    assert NETWORK_POLICIES.group_path == "/apis/networking.k8s.io/v1"
    with pytest.raises(ValueError, match="needs a namespace"):
        PODS.object_path("p")
    with pytest.raises(ValueError, match="cluster-scoped"):
        NODES.collection_path("shop")
    with pytest.raises(ValueError, match="bad Node name"):
        NODES.object_path("a/b")


def test_crud_with_merge_patch_and_the_three_statuses_controllers_act_on(kube: KubeClient) -> None:
    created = kube.create(NODES, node("n1"))
    assert created["metadata"]["name"] == "n1"
    with pytest.raises(KubeError) as err:
        kube.create(NODES, node("n1"))
    assert err.value.conflict and err.value.status == 409 and not err.value.not_found
    assert "already exists" in err.value.message
    patched = kube.merge_patch(NODES, "n1", {"metadata": {"labels": {"a": "1", "b": "2"}}})
    assert patched["metadata"]["labels"] == {"a": "1", "b": "2"}
    patched = kube.merge_patch(NODES, "n1", {"metadata": {"labels": {"a": None}}})  # null removes
    assert patched["metadata"]["labels"] == {"b": "2"}
    stale = {**kube.get(NODES, "n1"), "spec": {"podCIDR": "10.0.0.0/24"}}
    kube.replace(NODES, "n1", stale)
    with pytest.raises(KubeError) as err:  # the same resourceVersion again: stale
        kube.replace(NODES, "n1", stale)
    assert err.value.conflict
    kube.delete(NODES, "n1")
    with pytest.raises(KubeError) as err:
        kube.get(NODES, "n1")
    assert err.value.not_found and str(err.value) == "404 Not Found"


def test_namespaced_writes_and_discovery(kube: KubeClient) -> None:
    kube.create(CONFIG_MAPS, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                              "data": {"k": "v"}}, "kube-system")
    assert kube.get(CONFIG_MAPS, "c", "kube-system")["data"] == {"k": "v"}
    with pytest.raises(KubeError) as err:
        kube.get(CONFIG_MAPS, "c", "default")
    assert err.value.not_found
    served = {r["name"] for r in kube.discover(NETWORK_POLICIES)["resources"]}
    assert "networkpolicies" in served


def test_writes_are_strict(kube: KubeClient) -> None:
    with pytest.raises(KubeError) as err:
        kube.create(NODES, {**node("n1"), "spec": {"podCIDRR": "10.0.0.0/24"}})
    assert err.value.status in (400, 422) and "podCIDRR" in err.value.message


def test_a_429_is_waited_out_as_retry_after_says(api: KubeApiServer, kube: KubeClient) -> None:
    """urllib3 below the client honours Retry-After on a 429 itself (as it did before the adapter)."""
    kube.create(NODES, node("n1"))
    api.inject_error(r"^/api/v1/nodes/n1", 429, count=1, retry_after=1)
    started = time.monotonic()
    assert kube.get(NODES, "n1")["metadata"]["name"] == "n1"
    assert time.monotonic() - started >= 1.0
    assert api.request_count(r"^/api/v1/nodes/n1", "GET", 429) == 1


def test_an_error_status_keeps_the_status_message_and_retry_after() -> None:
    exc = ApiException(status=503, reason="Service Unavailable")
    exc.body = json.dumps({"kind": "Status", "message": "etcd is down", "code": 503})
    exc.headers = {"Retry-After": "7"}
    err = KubeError.from_api_exception(exc)
    assert (err.status, err.reason, err.message, err.retry_after) == (503, "Service Unavailable", "etcd is down", 7.0)
    assert str(err) == "503 Service Unavailable" and not (err.not_found or err.conflict or err.gone)
    bare = KubeError.from_api_exception(ApiException(status=410, reason="Gone"))
    assert bare.gone and bare.message == "" and bare.retry_after is None


def test_pages_and_a_watch_stream_that_another_thread_shuts(kube: KubeClient) -> None:
    for n in range(5):
        kube.create(NODES, node(f"n{n}"))
    names, token, pages = [], "", 0
    while True:
        page = kube.list_page(NODES, 2, token)
        pages += 1
        names += [item["metadata"]["name"] for item in page["items"]]
        token = page["metadata"].get("continue") or ""
        if not token:
            break
    assert pages == 3 and sorted(names) == [f"n{n}" for n in range(5)]
    stream = kube.watch(NODES, page["metadata"]["resourceVersion"], timeout_seconds=30, read_timeout=30)
    seen: list[dict[str, object]] = []
    ended = threading.Event()

    def read() -> None:
        try:
            for line in stream.lines():
                seen.append(json.loads(line))
        except KubeUnreachable:
            pass  # the shut stream may end as a cut read
        finally:
            ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    kube.create(NODES, node("late"))
    for _ in range(100):
        if seen:
            break
        ended.wait(0.05)
    assert [e["type"] for e in seen] == ["ADDED"]
    stream.shutdown()
    assert ended.wait(5), "shutdown() did not end a blocked read"
    stream.close()


def test_no_server_is_unreachable_not_an_error_status() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    kube = connect(f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(KubeUnreachable) as err:
            kube.get(NODES, "n1")
        assert not isinstance(err.value, KubeError)
        assert "Connection refused" in str(err.value) or "Max retries" in str(err.value)
    finally:
        kube.close()
