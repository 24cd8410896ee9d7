"""The kubeapi stand-in's watch streams through `kubernetes.watch.Watch`: order, selectors, bookmarks, 410."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException
from urllib3.exceptions import ProtocolError

from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.waiting import wait_for


@pytest.fixture
def server() -> Iterator[KubeApiServer]:
    with KubeApiServer(bookmark_interval=0.2) as srv:
        yield srv


@pytest.fixture
def core(server: KubeApiServer) -> Iterator[client.CoreV1Api]:
    api_client = server.api_client()
    yield client.CoreV1Api(api_client)
    api_client.close()


def pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}


def collect(func: Callable[..., Any], count: int, **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    """The first `count` events of a watch, as (type, raw object)."""
    events: list[tuple[str, dict[str, Any]]] = []
    watcher = watch.Watch()
    for event in watcher.stream(func, **kwargs):
        events.append((event["type"], event["raw_object"]))
        if len(events) == count:
            watcher.stop()
    return events


def in_background(action: Callable[[], None], server: KubeApiServer) -> threading.Thread:
    def run() -> None:
        assert server.wait_for_watches(1)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_events_in_order_from_resource_version(core: client.CoreV1Api) -> None:
    start = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod("a"))
    core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "y"}}})
    core.delete_namespaced_pod("a", "default")
    events = collect(core.list_namespaced_pod, 3, namespace="default", resource_version=start, timeout_seconds=5)
    assert [t for t, _ in events] == ["ADDED", "MODIFIED", "DELETED"]
    versions = [int(o["metadata"]["resourceVersion"]) for _, o in events]
    assert versions == sorted(versions) and versions[0] > int(start)
    assert events[0][1]["kind"] == "Pod" and events[0][1]["apiVersion"] == "v1"


def test_watch_without_version_starts_with_current_state(core: client.CoreV1Api, server: KubeApiServer) -> None:
    core.create_namespaced_pod("default", pod("existing"))
    thread = in_background(lambda: core.create_namespaced_pod("default", pod("new")), server)
    events = collect(core.list_namespaced_pod, 2, namespace="default", timeout_seconds=5)
    thread.join()
    assert [(t, o["metadata"]["name"]) for t, o in events] == [("ADDED", "existing"), ("ADDED", "new")]


def test_selector_transitions_become_added_and_deleted(core: client.CoreV1Api) -> None:
    start = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod("p", {"app": "other"}))
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "web"}}})
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"v": "2"}}})
    core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "other"}}})
    events = collect(core.list_namespaced_pod, 3, namespace="default", resource_version=start,
                     label_selector="app=web", timeout_seconds=5)
    assert [t for t, _ in events] == ["ADDED", "MODIFIED", "DELETED"]
    assert events[2][1]["metadata"]["labels"]["app"] == "web"  # the last state that matched


def test_field_selector_watch_across_namespaces(core: client.CoreV1Api) -> None:
    start = core.list_pod_for_all_namespaces().metadata.resource_version
    core.create_namespace({"metadata": {"name": "ns2"}})
    core.create_namespaced_pod("ns2", {**pod("n1-pod"), "spec": {"nodeName": "n1", "containers": []}})
    core.create_namespaced_pod("default", {**pod("n2-pod"), "spec": {"nodeName": "n2", "containers": []}})
    events = collect(core.list_pod_for_all_namespaces, 1, resource_version=start,
                     field_selector="spec.nodeName=n2", timeout_seconds=2)
    assert [(t, o["metadata"]["name"]) for t, o in events] == [("ADDED", "n2-pod")]


def test_bookmarks(core: client.CoreV1Api, server: KubeApiServer) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespace({"metadata": {"name": "unrelated"}})  # moves the global version on
    events = collect(core.list_namespaced_pod, 1, namespace="default", resource_version=rv,
                     allow_watch_bookmarks=True, timeout_seconds=5)
    kind, obj = events[0]
    assert kind == "BOOKMARK"
    assert obj["kind"] == "Pod" and int(obj["metadata"]["resourceVersion"]) == server.resource_version


def test_send_initial_events_ends_with_bookmark(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("a"))
    events = collect(core.list_namespaced_pod, 2, namespace="default", allow_watch_bookmarks=True,
                     send_initial_events=True, resource_version_match="NotOlderThan", timeout_seconds=5)
    assert [t for t, _ in events] == ["ADDED", "BOOKMARK"]
    assert events[1][1]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_gone_after_compaction(core: client.CoreV1Api, server: KubeApiServer) -> None:
    old = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod("a"))
    server.compact()
    with pytest.raises(ApiException) as err:  # the client turns the ERROR event into an exception
        collect(core.list_namespaced_pod, 1, namespace="default", resource_version=old, timeout_seconds=2)
    assert err.value.status == 410 and "Expired" in str(err.value.reason)
    # The raw stream is a single ERROR event holding a 410 Status, as kube-apiserver sends.
    resp = core.list_namespaced_pod("default", watch=True, resource_version=old, _preload_content=False)
    lines = [line for line in resp.read().decode().splitlines() if line]
    assert len(lines) == 1 and '"type":"ERROR"' in lines[0] and '"code":410' in lines[0]
    # A watch from the current version still works.
    current = core.list_namespaced_pod("default").metadata.resource_version
    thread = in_background(lambda: core.delete_namespaced_pod("a", "default"), server)
    assert collect(core.list_namespaced_pod, 1, namespace="default", resource_version=current,
                   timeout_seconds=5)[0][0] == "DELETED"
    thread.join()


def test_history_window_is_bounded(core: client.CoreV1Api) -> None:
    with KubeApiServer(history_limit=5) as small:
        api_client = small.api_client()
        small_core = client.CoreV1Api(api_client)
        start = small_core.list_namespaced_pod("default").metadata.resource_version
        for index in range(12):
            small_core.create_namespaced_pod("default", pod(f"p{index}"))
        with pytest.raises(ApiException) as err:
            collect(small_core.list_namespaced_pod, 1, namespace="default", resource_version=start, timeout_seconds=1)
        assert err.value.status == 410
        api_client.close()


def test_timeout_ends_stream(core: client.CoreV1Api) -> None:
    began = time.monotonic()
    assert collect(core.list_namespaced_pod, 1, namespace="default", resource_version="1", timeout_seconds=1) == []
    assert 0.9 <= time.monotonic() - began < 3


def test_close_watches_ends_stream_and_client_resumes(core: client.CoreV1Api, server: KubeApiServer) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    seen: list[str] = []
    watcher = watch.Watch()

    def drive() -> None:
        assert server.wait_for_watches(1)
        core.create_namespaced_pod("default", pod("before"))
        assert wait_for(lambda: seen == ["before"], 10, 0.01, "the first event")
        started = server.watches_started
        server.close_watches()
        assert wait_for(lambda: server.watches_started > started, 10, 0.01, "the client to re-watch")
        core.create_namespaced_pod("default", pod("after"))

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    # Without timeout_seconds the client re-watches from the last version it saw.
    for event in watcher.stream(core.list_namespaced_pod, namespace="default", resource_version=rv):
        seen.append(event["object"].metadata.name)
        if len(seen) == 2:
            watcher.stop()
    thread.join()
    assert seen == ["before", "after"]
    assert server.request_count(r"watch=True", method="GET") >= 2


def test_abrupt_close_breaks_the_stream(core: client.CoreV1Api, server: KubeApiServer) -> None:
    thread = in_background(lambda: server.close_watches(abrupt=True), server)
    with pytest.raises(ProtocolError):  # the connection broke mid-stream
        collect(core.list_namespaced_pod, 1, namespace="default", resource_version="1", timeout_seconds=5)
    thread.join()


def test_server_notices_a_client_that_went_away(core: client.CoreV1Api, server: KubeApiServer) -> None:
    core.create_namespaced_pod("default", pod("a"))
    assert collect(core.list_namespaced_pod, 1, namespace="default", timeout_seconds=30)[0][0] == "ADDED"
    assert wait_for(lambda: server.open_watches == 0, 3, 0.05, "the server to close the abandoned watch")
