"""The operator streams Services and EndpointSlices it watches (against the API stand-in):
created, changed and deleted objects reach the state stream as records."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from membrane.api.state_objects import EndpointSliceState, ServiceState, StateObject
from membrane.operator.config import OperatorConfig
from membrane.operator.running import Operator
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.waiting import wait_for

SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "selector": {"app": "web"},
                    "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local",
                    "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]}}


def endpoint_slice(ready: bool) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.1.0.5"], "nodeName": "node-a", "conditions": {"ready": ready}}]}


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(port=0) as server:
        yield server


def streamed(operator: Operator) -> list[StateObject]:
    _, objects = operator.state.snapshot()
    return [o for o in objects if isinstance(o, (ServiceState, EndpointSliceState))]


def test_services_and_slices_reach_the_stream(api: KubeApiServer) -> None:
    apis = api.api_client()
    operator = Operator(OperatorConfig(api_server=api.url, identity="op", http_addr="127.0.0.1:0",
                                       grpc_addr="127.0.0.1:0", install_crds=True, leader_election=False,
                                       resync_seconds=0.1)).start()
    try:
        core, discovery = client.CoreV1Api(apis), client.DiscoveryV1Api(apis)
        core.create_namespaced_service("default", SERVICE)
        discovery.create_namespaced_endpoint_slice("default", endpoint_slice(True))
        assert wait_for(lambda: len(streamed(operator)) == 2)
        (service,) = [o for o in streamed(operator) if isinstance(o, ServiceState)]
        (eps,) = [o for o in streamed(operator) if isinstance(o, EndpointSliceState)]
        assert (service.key, service.type, service.cluster_ips, service.affinity_timeout,
                service.external_traffic_local) == ("default/web", "NodePort", ("10.96.0.10",), 10800, True)
        assert [(p.name, p.port, p.target_port, p.node_port) for p in service.ports] == [("http", 80, "http", 30080)]
        assert (eps.service, [(e.addresses, e.ready, e.serving, e.node_name) for e in eps.endpoints]) == \
            ("web", [(("10.1.0.5",), True, True, "node-a")])
        discovery.replace_namespaced_endpoint_slice("web-abc", "default", endpoint_slice(False))
        assert wait_for(lambda: any(isinstance(o, EndpointSliceState) and not o.endpoints[0].ready
                                    for o in streamed(operator)))
        core.delete_namespaced_service("web", "default")
        discovery.delete_namespaced_endpoint_slice("web-abc", "default")
        assert wait_for(lambda: streamed(operator) == [])
    finally:
        operator.stop()
        apis.close()
