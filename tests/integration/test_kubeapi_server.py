"""The kubeapi stand-in's test hooks: restart, persistence, subprocess mode, injected errors, counters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client import ApiException
from urllib3.exceptions import MaxRetryError

from membrane_testkit.kubeapi import KubeApiServer, make_api_client


def pod(name: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "i"}]}}


def test_restart_keeps_objects_and_port() -> None:
    server = KubeApiServer().start()
    try:
        api_client = server.api_client()
        core = client.CoreV1Api(api_client)
        created = core.create_namespaced_pod("default", pod("keep"))
        port = server.port
        server.stop()
        assert not server.running
        with pytest.raises(MaxRetryError):  # connection refused while stopped
            core.read_namespaced_pod("keep", "default", _request_timeout=2)
        server.start()
        assert server.port == port
        again = core.read_namespaced_pod("keep", "default")
        assert again.metadata.uid == created.metadata.uid
        assert again.metadata.resource_version == created.metadata.resource_version
        assert int(core.create_namespaced_pod("default", pod("next")).metadata.resource_version) > \
            int(created.metadata.resource_version)
        api_client.close()
    finally:
        server.stop()


def test_state_file_survives_a_new_server(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with KubeApiServer(state_file=state) as first:
        api_client = first.api_client()
        core = client.CoreV1Api(api_client)
        core.create_namespace({"metadata": {"name": "persisted"}})
        core.create_namespaced_config_map("persisted", {"metadata": {"name": "cm"}, "data": {"k": "v"}})
        client.ApiextensionsV1Api(api_client).create_custom_resource_definition({
            "metadata": {"name": "identities.membrane.io"},
            "spec": {"group": "membrane.io", "scope": "Cluster",
                     "names": {"plural": "identities", "kind": "Identity"},
                     "versions": [{"name": "v1alpha1", "served": True, "storage": True}]}})
        client.CustomObjectsApi(api_client).create_cluster_custom_object(
            "membrane.io", "v1alpha1", "identities", {"metadata": {"name": "id-300"}})
        last_rv = first.resource_version
        api_client.close()
    assert state.exists()
    with KubeApiServer(state_file=state) as second:
        api_client = second.api_client()
        core = client.CoreV1Api(api_client)
        assert core.read_namespaced_config_map("cm", "persisted").data == {"k": "v"}
        assert second.resource_version == last_rv
        items = client.CustomObjectsApi(api_client).list_cluster_custom_object("membrane.io", "v1alpha1",
                                                                                "identities")["items"]
        assert [i["metadata"]["name"] for i in items] == ["id-300"]
        # History did not survive: a watch from before the restart is told to relist.
        with pytest.raises(ApiException) as err:
            core.list_namespaced_config_map("persisted", resource_version="1", resource_version_match="Exact")
        assert err.value.status == 410
        api_client.close()


def test_runs_as_a_subprocess(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "membrane_testkit.kubeapi", "--port", "0",
                             "--state-file", str(tmp_path / "s.json")],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("kubeapi listening on http://127.0.0.1:")
        api_client = make_api_client(line.split()[-1])
        core = client.CoreV1Api(api_client)
        core.create_namespaced_pod("default", pod("remote"))
        assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["remote"]
        api_client.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    assert "remote" in (tmp_path / "s.json").read_text()


def test_injected_errors_and_request_counters() -> None:
    with KubeApiServer() as server:
        api_client = server.api_client()
        core = client.CoreV1Api(api_client)
        rule = server.inject_error(r"/api/v1/namespaces/default/pods", code=500, count=2, method="GET")
        for _ in range(2):
            with pytest.raises(ApiException) as err:
                core.list_namespaced_pod("default")
            assert err.value.status == 500
        assert core.list_namespaced_pod("default").items == []
        assert rule.hits == 2 and rule.count == 0
        server.inject_error(r"/pods", code=429, retry_after=3)
        with pytest.raises(ApiException) as err:
            core.create_namespaced_pod("default", pod("x"))
        assert err.value.status == 429 and err.value.headers["Retry-After"] == "3"
        core.create_namespaced_pod("default", pod("x"))
        assert server.request_count(r"/pods", method="GET") == 3
        assert server.request_count(r"/pods", code=500) == 2
        assert server.request_count(r"/pods", method="POST", code=201) == 1
        server.reset_requests()
        assert server.requests == []
        api_client.close()


def test_listens_on_loopback_only() -> None:
    with pytest.raises(ValueError):
        KubeApiServer(host="0.0.0.0")
    with KubeApiServer() as server:
        assert server.url.startswith("http://127.0.0.1:")
