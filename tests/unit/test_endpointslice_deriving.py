"""Standalone EndpointSlice derivation (operator/endpointslice_deriving.py): the slices the
Kubernetes EndpointSlice controller would make from a Service and its Pods."""

from __future__ import annotations

import random
from typing import Any

import kubernetes_validate

from membrane.k8s_models import parse_object
from membrane.operator.endpointslice_deriving import EndpointSliceDeriver, derive_endpoint_slices
from membrane.operator.service_records import endpoint_slice_state, service_state
from membrane.services import service_table
from membrane.strict_fields import kubernetes_version, strict_errors

JSON = dict[str, Any]


def service(selector: dict[str, str] | None = None, ports: list[JSON] | None = None, **spec: Any) -> JSON:
    spec.setdefault("clusterIP", "10.96.0.10")
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "uid": "svc-uid", "labels": {"tier": "front"}},
            "spec": {"selector": {"app": "web"} if selector is None else selector,
                     "ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": "http"}],
                     **spec}}


def pod(name: str, ip: str | list[str] | None = "10.1.0.1", ready: bool | None = True, node: str = "node-a",
        http: int | None = 8080, labels: dict[str, str] | None = None, namespace: str = "shop",
        **extra: Any) -> JSON:
    ports = [{"name": "http", "containerPort": http}] if http else []
    status: JSON = {"phase": extra.pop("phase", "Running")}
    if ip:
        ips = [ip] if isinstance(ip, str) else ip
        status["podIP"] = ips[0]
        status["podIPs"] = [{"ip": i} for i in ips]
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    meta: JSON = {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                  "labels": {"app": "web"} if labels is None else labels}
    if extra.pop("deleting", False):
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    spec: JSON = {"nodeName": node, "containers": [{"name": "c", "ports": ports}], **extra}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def endpoints(slices: list[JSON]) -> dict[str, tuple[JSON, list[JSON]]]:
    """pod name -> (its endpoint, the ports of its slice)."""
    return {ep["targetRef"]["name"]: (ep, s["ports"]) for s in slices for ep in s["endpoints"]}


def test_selected_pods_become_endpoints_with_conditions_node_zone_and_ref() -> None:
    pods = [pod("web-0", "10.1.0.1"), pod("web-1", "10.1.0.2", ready=False, node="node-b"),
            pod("other", "10.1.0.3", labels={"app": "db"}), pod("web-x", "10.9.0.1", namespace="elsewhere")]
    slices = derive_endpoint_slices(service(), pods, {"node-a": "zone-1"})
    assert len(slices) == 1
    (eps,) = slices
    assert eps["addressType"] == "IPv4" and eps["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert eps["metadata"]["labels"] == {"tier": "front", "kubernetes.io/service-name": "web",
                                         "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.membrane.io"}
    assert eps["metadata"]["ownerReferences"][0]["uid"] == "svc-uid"
    got = endpoints(slices)
    assert sorted(got) == ["web-0", "web-1"]
    web0, web1 = got["web-0"][0], got["web-1"][0]
    assert web0 == {"addresses": ["10.1.0.1"], "conditions": {"ready": True, "serving": True, "terminating": False},
                    "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": "uid-web-0"},
                    "nodeName": "node-a", "zone": "zone-1"}
    assert web1["conditions"] == {"ready": False, "serving": False, "terminating": False}
    assert "zone" not in web1  # node-b's zone is not known


def test_terminating_pods_serve_but_are_not_ready() -> None:
    pods = [pod("web-0", deleting=True), pod("web-1", "10.1.0.2", ready=False, deleting=True)]
    got = endpoints(derive_endpoint_slices(service(), pods, {}))
    assert got["web-0"][0]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert got["web-1"][0]["conditions"] == {"ready": False, "serving": False, "terminating": True}


def test_publish_not_ready_addresses_makes_every_endpoint_ready() -> None:
    pods = [pod("web-0", ready=False), pod("web-1", "10.1.0.2", deleting=True)]
    got = endpoints(derive_endpoint_slices(service(publishNotReadyAddresses=True), pods, {}))
    assert [got[n][0]["conditions"]["ready"] for n in ("web-0", "web-1")] == [True, True]


def test_terminal_and_addressless_pods_are_left_out() -> None:
    pods = [pod("done", phase="Succeeded"), pod("failed", "10.1.0.2", phase="Failed"), pod("pending", None),
            pod("web-0", "10.1.0.4")]
    assert sorted(endpoints(derive_endpoint_slices(service(), pods, {}))) == ["web-0"]


def test_named_target_port_resolves_per_pod_into_separate_slices() -> None:
    pods = [pod("old-0", "10.1.0.1", http=8080), pod("old-1", "10.1.0.2", http=8080),
            pod("new-0", "10.1.0.3", http=9090), pod("bare", "10.1.0.4", http=None)]
    slices = derive_endpoint_slices(service(), pods, {})
    by_port = {tuple(p["port"] for p in s["ports"]): sorted(e["targetRef"]["name"] for e in s["endpoints"])
               for s in slices}
    # A pod that cannot resolve the name has the port left out (the controller does the same).
    assert by_port == {(8080,): ["old-0", "old-1"], (9090,): ["new-0"], (): ["bare"]}
    assert len({s["metadata"]["name"] for s in slices}) == 3


def test_named_port_must_match_protocol_and_sidecars_count() -> None:
    ports = [{"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "targetPort": "dns", "protocol": "TCP"},
             {"name": "metrics", "port": 9100, "targetPort": "metrics"}]
    p = pod("dns-0", http=None)
    p["spec"]["containers"] = [{"name": "c", "ports": [{"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]
    p["spec"]["initContainers"] = [{"name": "side", "restartPolicy": "Always",
                                    "ports": [{"name": "metrics", "containerPort": 9101}]},
                                   {"name": "init", "ports": [{"name": "dns", "containerPort": 1, "protocol": "TCP"}]}]
    (eps,) = derive_endpoint_slices(service(ports=ports), [p], {})
    assert eps["ports"] == [{"name": "dns", "port": 5353, "protocol": "UDP"},
                            {"name": "metrics", "port": 9101, "protocol": "TCP"}]


def test_numeric_and_defaulted_target_ports() -> None:
    ports = [{"name": "a", "port": 80, "targetPort": 8080}, {"name": "b", "port": 81}]
    (eps,) = derive_endpoint_slices(service(ports=ports), [pod("web-0", http=None)], {})
    assert [(p["name"], p["port"]) for p in eps["ports"]] == [("a", 8080), ("b", 81)]


def test_families_dual_stack_and_headless() -> None:
    pods = [pod("web-0", ["10.1.0.1", "fd00:1::1"]), pod("web-1", ["10.1.0.2"])]
    dual = derive_endpoint_slices(service(clusterIPs=["10.96.0.10", "fd00:96::10"],
                                          ipFamilies=["IPv4", "IPv6"]), pods, {})
    assert sorted((s["addressType"], len(s["endpoints"])) for s in dual) == [("IPv4", 2), ("IPv6", 1)]
    v6 = derive_endpoint_slices(service(clusterIP="fd00:96::10"), pods, {})
    assert [(s["addressType"], [e["addresses"] for e in s["endpoints"]]) for s in v6] == [("IPv6", [["fd00:1::1"]])]
    headless = derive_endpoint_slices(service(clusterIP="None"), pods, {})
    assert sorted(s["addressType"] for s in headless) == ["IPv4", "IPv6"]


def test_no_selector_or_external_name_means_no_slices() -> None:
    pods = [pod("web-0")]
    assert derive_endpoint_slices(service(selector={}), pods, {}) == []
    no_selector = service()
    del no_selector["spec"]["selector"]
    assert derive_endpoint_slices(no_selector, pods, {}) == []
    assert derive_endpoint_slices(service(type="ExternalName", externalName="x.example.com"), pods, {}) == []
    assert derive_endpoint_slices(service(), [], {}) == []


def test_large_services_are_split_at_100_endpoints() -> None:
    pods = [pod(f"web-{i:03d}", f"10.1.{i // 250}.{i % 250 + 1}") for i in range(250)]
    slices = derive_endpoint_slices(service(), pods, {})
    assert [len(s["endpoints"]) for s in slices] == [100, 100, 50]
    assert len({s["metadata"]["name"] for s in slices}) == 3


def test_stable_whatever_the_order() -> None:
    pods = [pod("web-0", "10.1.0.1"), pod("web-1", "10.1.0.2", http=9090), pod("web-2", "10.1.0.3")]
    first = derive_endpoint_slices(service(), pods, {})
    assert derive_endpoint_slices(service(), list(reversed(pods)), {}) == first


def test_hostname_when_the_pod_subdomain_names_the_service() -> None:
    pods = [pod("web-0", hostname="web-0", subdomain="web"), pod("web-1", "10.1.0.2", hostname="h", subdomain="x")]
    got = endpoints(derive_endpoint_slices(service(clusterIP="None"), pods, {}))
    assert got["web-0"][0]["hostname"] == "web-0" and "hostname" not in got["web-1"][0]


def test_derived_slices_are_valid_kubernetes_objects() -> None:
    pods = [pod("web-0", ["10.1.0.1", "fd00:1::1"]), pod("web-1", "10.1.0.2", ready=False, deleting=True, http=9090),
            pod("web-2", "10.1.0.3", http=None)]
    slices = derive_endpoint_slices(service(clusterIPs=["10.96.0.10", "fd00:96::10"], ipFamilies=["IPv4", "IPv6"],
                                            ports=[{"name": "http", "port": 80, "targetPort": "http",
                                                    "appProtocol": "http"}]), pods, {"node-a": "z1"})
    assert len(slices) == 4
    for eps in slices:
        kubernetes_validate.validate(eps, kubernetes_version(), strict=True)
        assert strict_errors(eps) == []
        parse_object(eps)


def test_through_records_into_the_service_table() -> None:
    svc = service(ports=[{"name": "http", "port": 80, "targetPort": "http"}])
    pods = [pod("web-0", "10.1.0.1", http=8080), pod("web-1", "10.1.0.2", http=9090, node="node-b"),
            pod("web-2", "10.1.0.3", ready=False, deleting=True)]
    slices = [endpoint_slice_state(s) for s in derive_endpoint_slices(svc, pods, {})]
    (entry,) = service_table([service_state(svc)], slices, "node-a").values()
    assert [(b.ip, b.port, b.node) for b in entry.backends] == [("10.1.0.1", 8080, "node-a"),
                                                                ("10.1.0.2", 9090, "node-b")]
    # Every ready pod gone: the serving terminating one takes over.
    gone = [endpoint_slice_state(s) for s in derive_endpoint_slices(svc, [pods[2]], {})]
    gone_terminating = [pod("web-2", "10.1.0.3", deleting=True)]
    (entry,) = service_table([service_state(svc)], gone, "node-a").values()
    assert entry.backends == ()  # not serving either: refuse
    slices = [endpoint_slice_state(s) for s in derive_endpoint_slices(svc, gone_terminating, {})]
    (entry,) = service_table([service_state(svc)], slices, "node-a").values()
    assert [(b.ip, b.state) for b in entry.backends] == [("10.1.0.3", "terminating")]


def test_incremental_deriver_matches_deriving_from_scratch() -> None:
    """Random sequences of pod, service and node changes: what the deriver has emitted equals
    deriving every service anew from the final objects (its indexes miss nothing)."""
    rng = random.Random(7)
    deriver = EndpointSliceDeriver()
    emitted: dict[str, JSON] = {}
    services: dict[str, JSON] = {}
    pods: dict[str, JSON] = {}
    zones: dict[str, str] = {}
    for step in range(600):
        roll = rng.random()
        ns = rng.choice(["shop", "dev"])
        if roll < 0.2:
            name = rng.choice(["web", "api", "db"])
            key = f"{ns}/{name}"
            if key in services and rng.random() < 0.3:
                del services[key]
                deriver.set_service(key, None)
            else:
                selector = {"app": rng.choice(["web", "api", "db"])}
                if rng.random() < 0.3:
                    selector["tier"] = rng.choice(["a", "b"])
                svc = service(selector=selector)
                svc["metadata"].update(name=name, namespace=ns)
                services[key] = svc
                deriver.set_service(key, svc)
        elif roll < 0.9:
            name = f"p{rng.randrange(12)}"
            key = f"{ns}/{name}"
            if key in pods and rng.random() < 0.25:
                del pods[key]
                deriver.set_pod(key, None)
            else:
                labels = {"app": rng.choice(["web", "api", "db"]), "tier": rng.choice(["a", "b"])}
                p = pod(name, f"10.1.{step // 250}.{step % 250 + 1}", ready=rng.random() < 0.8,
                        node=rng.choice(["node-a", "node-b"]), http=rng.choice([8080, 9090, None]),
                        labels=labels, namespace=ns, deleting=rng.random() < 0.1)
                pods[key] = p
                deriver.set_pod(key, p)
        else:
            node = rng.choice(["node-a", "node-b"])
            zone = rng.choice(["", "z1", "z2"])
            zones[node] = zone
            deriver.set_node(node, {"metadata": {"name": node, "labels": {"topology.kubernetes.io/zone": zone}}})
        if rng.random() < 0.3:  # commits at random points: changes between them are batched
            for key, obj in deriver.take_changes().items():
                if obj is None:
                    emitted.pop(key, None)
                else:
                    emitted[key] = obj
    for key, obj in deriver.take_changes().items():
        if obj is None:
            emitted.pop(key, None)
        else:
            emitted[key] = obj
    known = {n: z for n, z in zones.items() if z}
    expected = {f"{s['metadata']['namespace']}/{s['metadata']['name']}": s
                for svc in services.values() for s in derive_endpoint_slices(svc, pods.values(), known)}
    assert emitted == expected
    assert len(expected) > 3  # the sequence did make slices
