"""Services in standalone mode: `membranectl apply` of Pods and a Service puts Service and
EndpointSlice records on the local stream (slices derived as Kubernetes' controller derives
them), equal to what a cluster's operator streams for the same objects and slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from membrane.agent.api_serving import RequestError
from membrane.agent.local_source import LocalSource
from membrane.agent.object_store import ObjectStore
from membrane.api.state_objects import (
    EndpointSliceState,
    Kind,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
    StateObject,
)
from membrane.operator.endpointslice_deriving import derive_endpoint_slices
from membrane.operator.state_building import StateBuilder
from membrane.services import service_table

JSON = dict[str, Any]
NODE = "node-a"


def service(name: str = "web", selector: dict[str, str] | None = None, **spec: Any) -> JSON:
    spec.setdefault("clusterIP", "10.96.0.10")
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": "http"}])
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def pod(name: str, ip: str | None, port: int = 8080, ready: bool | None = None, node: str | None = None,
        app: str = "web") -> JSON:
    obj: JSON = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop",
                                                              "labels": {"app": app}},
                 "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
                 "status": {}}
    if node:
        obj["spec"]["nodeName"] = node
    if ip:
        obj["status"]["podIPs"] = [{"ip": ip}]
    if ready is not None:
        obj["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    return obj


def setup(tmp_path: Path) -> tuple[ObjectStore, LocalSource]:
    store = ObjectStore(tmp_path / "objects.json")
    store.load()
    source = LocalSource(NODE, clock=lambda: 0.0)
    store.listeners.append(source.on_object)
    return store, source


def records(source: LocalSource) -> tuple[list[ServiceState], list[EndpointSliceState]]:
    source.commit()
    _, state = source.snapshot()
    services = [o for o in state.values() if isinstance(o, ServiceState)]
    slices = [o for o in state.values() if isinstance(o, EndpointSliceState)]
    return services, slices


def backends(source: LocalSource) -> dict[str, list[tuple[str, int, str]]]:
    services, slices = records(source)
    return {str(f): [(b.ip, b.port, b.state) for b in e.backends]
            for f, e in service_table(services, slices, NODE).items()}


def test_pods_and_a_service_give_load_balancing_records(tmp_path: Path) -> None:
    store, source = setup(tmp_path)
    store.apply([pod("web-0", "10.1.0.1"), pod("web-1", "10.1.0.2", port=9090, node="node-b"),
                 pod("db-0", "10.1.0.3", app="db"), service(selector={"app": "web"})])
    services, slices = records(source)
    assert services == [ServiceState("shop", "web", "ClusterIP", ("10.96.0.10",),
                                     services[0].ports)]
    assert {(p.name, p.target_port) for p in services[0].ports} == {("http", "http")}
    assert all(s.service == "web" for s in slices) and len(slices) == 2  # two resolutions of "http"
    assert backends(source) == {"10.96.0.10:80/TCP": [("10.1.0.1", 8080, "ready"), ("10.1.0.2", 9090, "ready")]}
    # The stored pod without a node is this node's (as for identities).
    assert {e.target: e.node_name for s in slices for e in s.endpoints} == {"shop/web-0": NODE,
                                                                          "shop/web-1": "node-b"}


def test_readiness_deletion_and_addresses_follow_the_pods(tmp_path: Path) -> None:
    store, source = setup(tmp_path)
    store.apply([service(selector={"app": "web"}), pod("web-0", "10.1.0.1"), pod("web-1", None)])
    assert backends(source) == {"10.96.0.10:80/TCP": [("10.1.0.1", 8080, "ready")]}
    source.on_endpoint("shop", "web-1", ("10.1.0.2",))  # CNI ADD gave it an address
    assert backends(source)["10.96.0.10:80/TCP"] == [("10.1.0.1", 8080, "ready"), ("10.1.0.2", 8080, "ready")]
    store.apply([pod("web-0", "10.1.0.1", ready=False)])  # Ready False: out
    assert backends(source)["10.96.0.10:80/TCP"] == [("10.1.0.2", 8080, "ready")]
    deleting = pod("web-1", None)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    store.apply([deleting])  # the last ready pod is terminating: it still serves
    assert backends(source)["10.96.0.10:80/TCP"] == [("10.1.0.2", 8080, "terminating")]
    store.delete([deleting])
    assert backends(source)["10.96.0.10:80/TCP"] == []  # nothing usable: refuse
    store.delete([service()])
    services, slices = records(source)
    assert services == [] and slices == []


def test_a_selector_change_moves_the_endpoints(tmp_path: Path) -> None:
    store, source = setup(tmp_path)
    store.apply([service(selector={"app": "web"}), pod("web-0", "10.1.0.1"), pod("api-0", "10.1.0.5", app="api")])
    store.apply([service(selector={"app": "api"})])
    assert backends(source) == {"10.96.0.10:80/TCP": [("10.1.0.5", 8080, "ready")]}


def test_node_zone_reaches_the_endpoints(tmp_path: Path) -> None:
    store, source = setup(tmp_path)
    store.apply([service(selector={"app": "web"}), pod("web-0", "10.1.0.1")])
    _, slices = records(source)
    assert [e.zone for s in slices for e in s.endpoints] == [""]  # the node is not known yet
    store.apply([{"apiVersion": "v1", "kind": "Node",
                  "metadata": {"name": NODE, "labels": {"topology.kubernetes.io/zone": "zone-1"}}}])
    _, slices = records(source)
    assert [e.zone for s in slices for e in s.endpoints] == ["zone-1"]


def test_applied_slices_serve_a_service_without_selector(tmp_path: Path) -> None:
    store, source = setup(tmp_path)
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "ext-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "ext"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8443, "protocol": "TCP"}],
           "endpoints": [{"addresses": ["192.168.50.7"]}]}
    store.apply([service("ext", ports=[{"name": "http", "port": 443}]), eps, pod("web-0", "10.1.0.1")])
    assert backends(source) == {"10.96.0.10:443/TCP": [("192.168.50.7", 8443, "ready")]}


def test_the_local_stream_equals_the_operators_for_the_same_objects(tmp_path: Path) -> None:
    svc = service(selector={"app": "web"}, type="NodePort",
                  ports=[{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}])
    pods = [pod("web-0", "10.1.0.1", node=NODE, ready=True), pod("web-1", "10.1.0.2", node="node-b", ready=False)]
    store, source = setup(tmp_path)
    store.apply([*pods, svc])
    services, slices = records(source)
    # The cluster: the API server stored the same objects and its controller wrote the slices.
    builder = StateBuilder()
    builder.set_service("shop/web", svc)
    for s in derive_endpoint_slices(svc, pods, {}):
        builder.set_endpoint_slice(f"shop/{s['metadata']['name']}", s)
    cluster: list[StateObject] = sorted((o for o in builder.state.values()
                                         if o.kind in (Kind.SERVICE, Kind.ENDPOINTSLICE)), key=lambda o: o.key)
    assert sorted([*services, *slices], key=lambda o: o.key) == cluster


@pytest.mark.parametrize("obj,expected", [
    (service(selector={"app": "web"}, clusterIP=None),
     "Service web: spec.clusterIP: required in standalone mode (no API server allocates one)"),
    (service(type="NodePort"), "Service web: spec.ports[0].nodePort: required in standalone mode"),
    (service(ports=[{"port": 80}, {"port": 81}]), "Service web: spec.ports[0].name: required when a service has "
                                                  "several ports"),
    (service(ports=[{"name": "http", "port": 80, "protocl": "TCP"}]), "Service web: spec.ports[0].protocl: "
                                                                      "unknown field"),
])
def test_apply_refuses_naming_field_and_reason_and_keeps_nothing(tmp_path: Path, obj: JSON, expected: str) -> None:
    if obj["spec"].get("clusterIP") is None:
        obj["spec"].pop("clusterIP", None)
    store, source = setup(tmp_path)
    with pytest.raises(RequestError) as caught:
        store.apply([pod("web-0", "10.1.0.1"), obj])
    assert caught.value.code == 422
    assert any(d.startswith(expected) for d in caught.value.details or []), caught.value.details
    assert store.list("Service") == [] and store.list("Pod") == []
    assert records(source) == ([], [])


def test_every_service_field_survives_the_store(tmp_path: Path) -> None:
    """The store keeps models and hands the local source their dump: every field a record
    reads must come back under its API name (clusterIPs, externalIPs, clientIP, ...)."""
    svc = service(selector={"app": "web"}, type="LoadBalancer", clusterIPs=["10.96.0.10"],
                  externalIPs=["192.0.2.7"], sessionAffinity="ClientIP",
                  sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}}, externalTrafficPolicy="Local",
                  internalTrafficPolicy="Local", healthCheckNodePort=32000,
                  ports=[{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "UDP"}])
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}
    store, source = setup(tmp_path)
    store.apply([svc])
    (record,) = records(source)[0]
    builder = StateBuilder()
    builder.set_service("shop/web", svc)
    assert record == builder.state[(Kind.SERVICE, "shop/web")]
    assert record == ServiceState("shop", "web", "LoadBalancer", ("10.96.0.10",),
                                  (ServicePortState("http", "UDP", 80, "http", 30080),), ("192.0.2.7",),
                                  ("203.0.113.5",), 600, True, True, 32000)


def test_every_slice_field_survives_the_store(tmp_path: Path) -> None:
    eps = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "ext-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "ext"}},
           "addressType": "IPv6", "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}],
           "endpoints": [{"addresses": ["fd00::7"], "conditions": {"ready": False, "serving": True, "terminating": True},
                          "nodeName": "node-b", "zone": "z1", "hints": {"forZones": [{"name": "z1"}]},
                          "targetRef": {"kind": "Pod", "namespace": "shop", "name": "dns-0"}}]}
    store, source = setup(tmp_path)
    store.apply([eps])
    (record,) = records(source)[1]
    builder = StateBuilder()
    builder.set_endpoint_slice("shop/ext-1", eps)
    assert record == builder.state[(Kind.ENDPOINTSLICE, "shop/ext-1")]
    assert (record.address_type, record.ports[0].port, record.endpoints[0]) == (
        "IPv6", 5353, SliceEndpointState(("fd00::7",), False, True, True, "node-b", "z1", ("z1",), "shop/dns-0"))
