"""List+watch against the API stand-in with the real client: 410 relist, recovery after closed
watches and a restarted server, backoff on 500s."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from membrane.api.backoff import Backoff
from membrane.operator.cache import ObjectCache
from membrane.operator.kube_client import KubeClient
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.resources import PODS
from membrane.operator.watching import ResourceWatcher
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.waiting import wait_for


class RecordingBackoff(Backoff):
    delays: list[float]

    def __init__(self) -> None:
        super().__init__(initial=0.05, maximum=0.4, rng=random.Random(3))
        self.delays = []

    def next(self) -> float:
        delay = super().next()
        self.delays.append(delay)
        return delay


def pod(name: str) -> dict:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}}


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(port=0) as server:
        yield server


@pytest.fixture
def core(api: KubeApiServer) -> Iterator[client.CoreV1Api]:
    api_client = api.api_client()
    yield client.CoreV1Api(api_client)
    api_client.close()


def start_watcher(api: KubeApiServer) -> tuple[ResourceWatcher, ObjectCache, OperatorMetrics]:
    cache, metrics = ObjectCache(), OperatorMetrics()
    watcher = ResourceWatcher(KubeClient(api.api_client()), PODS, cache, metrics, RecordingBackoff,
                              read_timeout=10)
    watcher.start()
    assert wait_for(lambda: cache.synced(PODS))
    return watcher, cache, metrics


def names(cache: ObjectCache) -> set[str]:
    return {p["metadata"]["name"] for p in cache.list(PODS)}


def lists(metrics: OperatorMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("membrane_operator_watch_lists_total",
                                             {"resource": "pods", "reason": reason}) or 0.0


def test_relist_after_410_catches_up_missed_changes(api: KubeApiServer,
                                                    core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("a"))
    core.create_namespaced_pod("default", pod("b"))
    watcher, cache, metrics = start_watcher(api)
    try:
        assert names(cache) == {"a", "b"}
        # Keep the watcher from re-watching while we change things behind its back.
        rule = api.inject_error(r"/api/v1/pods\?.*watch=true", 503, count=10_000)
        api.close_watches()
        assert wait_for(lambda: rule.hits >= 1)
        core.delete_namespaced_pod("b", "default")
        core.create_namespaced_pod("default", pod("c"))
        api.compact()
        while not cache.events.empty():
            cache.events.get_nowait()
        api.clear_errors()
        assert wait_for(lambda: names(cache) == {"a", "c"})
        assert lists(metrics, "expired") == 1
        events = {(e.type, e.key) for e in list(cache.events.queue)}
        assert ("DELETED", "default/b") in events and ("ADDED", "default/c") in events
        # And it keeps watching afterwards.
        core.create_namespaced_pod("default", pod("d"))
        assert wait_for(lambda: "d" in names(cache))
    finally:
        watcher.stop()


def test_resumes_after_closed_watches_without_relisting(api: KubeApiServer,
                                                        core: client.CoreV1Api) -> None:
    watcher, cache, metrics = start_watcher(api)
    try:
        for abrupt in (False, True):
            assert api.wait_for_watches(1)
            api.close_watches(abrupt=abrupt)
            core.create_namespaced_pod("default", pod(f"p-{abrupt}".lower()))
        assert wait_for(lambda: names(cache) == {"p-false", "p-true"})
        assert lists(metrics, "initial") == 1 and lists(metrics, "expired") == 0
    finally:
        watcher.stop()


def test_recovers_after_api_server_restart(api: KubeApiServer, core: client.CoreV1Api) -> None:
    watcher, cache, metrics = start_watcher(api)
    try:
        api.restart(downtime=0.3)
        core.create_namespaced_pod("default", pod("after"))
        assert wait_for(lambda: "after" in names(cache), timeout=10)
        assert lists(metrics, "expired") == 0  # history survived: resumed from its version
    finally:
        watcher.stop()


def test_backoff_on_injected_500s(api: KubeApiServer, core: client.CoreV1Api) -> None:
    api.inject_error(r"^/api/v1/pods\?limit", 500, count=4)
    core.create_namespaced_pod("default", pod("a"))
    cache, metrics = ObjectCache(), OperatorMetrics()
    watcher = ResourceWatcher(KubeClient(api.api_client()), PODS, cache, metrics, RecordingBackoff)
    started = time.monotonic()
    watcher.start()
    try:
        assert wait_for(lambda: cache.synced(PODS), timeout=10)
        elapsed = time.monotonic() - started
        backoff = watcher.backoff
        assert isinstance(backoff, RecordingBackoff)
        assert len(backoff.delays) == 4
        for n, delay in enumerate(backoff.delays):  # exponential ceiling, jittered below it
            ceiling = min(0.05 * 2 ** n, 0.4)
            assert ceiling / 2 <= delay <= ceiling
        assert elapsed >= sum(backoff.delays)
        assert backoff.attempts == 0  # reset by the successful list
        assert api.request_count(r"^/api/v1/pods\?limit", "GET", 500) == 4
        assert metrics.registry.get_sample_value(
            "membrane_operator_watch_errors_total", {"resource": "pods", "code": "500"}) == 4
        assert names(cache) == {"a"}
    finally:
        watcher.stop()


def test_retry_after_is_honoured(api: KubeApiServer) -> None:
    api.inject_error(r"^/api/v1/pods\?limit", 429, count=1, retry_after=1)
    cache, metrics = ObjectCache(), OperatorMetrics()
    watcher = ResourceWatcher(KubeClient(api.api_client()), PODS, cache, metrics, RecordingBackoff)
    started = time.monotonic()
    watcher.start()
    try:
        assert wait_for(lambda: cache.synced(PODS), timeout=5)
        assert time.monotonic() - started >= 1.0
    finally:
        watcher.stop()
