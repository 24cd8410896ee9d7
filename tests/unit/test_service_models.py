"""Service and EndpointSlice models (membrane/service_models.py): what Kubernetes accepts is
accepted (checked against Kubernetes' own schemas with kubernetes-validate and our strict
check), what the API server refuses is refused naming the field and the reason."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from membrane.k8s_models import ObjectValidationError, parse_object
from membrane.service_models import EndpointSlice, Service
from membrane.strict_fields import kubernetes_version, strict_errors

JSON = dict[str, Any]

LB: JSON = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
    "spec": {
        "type": "LoadBalancer", "selector": {"app": "web"},
        "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP"},
                  {"name": "dns", "port": 53, "targetPort": 5353, "nodePort": 30053, "protocol": "UDP",
                   "appProtocol": "dns"}],
        "externalIPs": ["192.0.2.7"], "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
        "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster", "healthCheckNodePort": 32000,
        "loadBalancerSourceRanges": ["198.51.100.0/24"], "allocateLoadBalancerNodePorts": True,
        "publishNotReadyAddresses": False,
    },
    "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5", "ipMode": "VIP"}, {"hostname": "lb.example.com"}]}},
}
HEADLESS: JSON = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db", "namespace": "shop"},
                  "spec": {"clusterIP": "None", "selector": {"app": "db"}}}
EXTERNAL_NAME: JSON = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext"},
                       "spec": {"type": "ExternalName", "externalName": "db.example.com."}}
SLICE: JSON = {
    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
    "metadata": {"name": "web-abc12", "namespace": "shop",
                 "labels": {"kubernetes.io/service-name": "web",
                            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
    "addressType": "IPv4",
    "endpoints": [
        {"addresses": ["10.1.0.5"], "conditions": {"ready": True, "serving": True, "terminating": False},
         "nodeName": "node-a", "zone": "zone-1", "hints": {"forZones": [{"name": "zone-1"}]},
         "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-0", "uid": "u1"}},
        {"addresses": ["10.1.0.6"], "conditions": {"ready": False, "serving": True, "terminating": True},
         "nodeName": "node-b", "hostname": "web-1"},
        {"addresses": ["10.1.0.7"]},
    ],
    "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
              {"name": "dns", "port": 5353, "protocol": "UDP"}],
}


def with_(obj: JSON, path: str, value: Any) -> JSON:
    """A copy of `obj` with the dotted `path` set to `value` (None: removed)."""
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node: Any = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is None:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def k8s_accepts(obj: JSON) -> bool:
    try:
        kubernetes_validate.validate(obj, kubernetes_version(), strict=True)
    except kubernetes_validate.ValidationError:
        return False
    return True


def service(obj: JSON) -> Service:
    parsed = parse_object(obj)
    assert isinstance(parsed, Service)
    return parsed


def errors(obj: JSON) -> list[str]:
    try:
        parse_object(obj)
    except ObjectValidationError as exc:
        return [str(e) for e in exc.errors]
    return []


@pytest.mark.parametrize("obj", [LB, HEADLESS, EXTERNAL_NAME, SLICE], ids=["lb", "headless", "externalname", "slice"])
def test_valid_objects_are_accepted_as_kubernetes_accepts_them(obj: JSON) -> None:
    assert k8s_accepts(obj)
    assert strict_errors(obj) == []
    assert errors(obj) == []


def test_service_fields_read() -> None:
    svc = parse_object(LB)
    assert isinstance(svc, Service)
    spec = svc.spec
    assert spec.addresses == ["10.96.0.10"] and not spec.headless and spec.affinity_timeout == 600
    assert [(p.name, p.protocol, p.port, p.target, p.node_port) for p in spec.ports] == [
        ("http", "TCP", 80, "http", 30080), ("dns", "UDP", 53, 5353, 30053)]
    assert [i.ip for i in svc.status.load_balancer.ingress] == ["203.0.113.5", None]
    assert svc.unallocated() == []
    headless = parse_object(HEADLESS)
    assert isinstance(headless, Service) and headless.spec.headless and headless.spec.affinity_timeout == 0
    # ClientIP without a timeout: the API server's default, 3 hours.
    bare = with_(with_(LB, "spec.sessionAffinityConfig", None), "metadata.name", "bare")
    assert service(bare).spec.affinity_timeout == 10800
    # An unset targetPort is the port.
    plain = with_(HEADLESS, "spec", {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]})
    assert service(plain).spec.ports[0].target == 80


def test_slice_fields_read() -> None:
    eps = parse_object(SLICE)
    assert isinstance(eps, EndpointSlice)
    assert eps.service_name == "web" and eps.address_type == "IPv4"
    assert [e.conditions.ready for e in eps.endpoints] == [True, False, None]
    assert eps.endpoints[0].hints is not None and eps.endpoints[0].hints.for_zones[0].name == "zone-1"


# Refused by the schema itself: kubernetes-validate and our strict check agree, and name the field.
@pytest.mark.parametrize("obj,field", [
    (with_(LB, "spec.ports.0.prot", 80), "spec.ports[0].prot: unknown field"),
    (with_(LB, "spec.ports.0.port", "80"), "spec.ports[0].port: expected integer, got string"),
    (with_(LB, "spec.clusterIPs", "10.96.0.10"), "spec.clusterIPs: expected array, got string"),
    (with_(SLICE, "addressType", None), "addressType: required field missing"),
    (with_(SLICE, "endpoints.0.conditions.ready", "yes"), "endpoints[0].conditions.ready: expected boolean"),
    (with_(SLICE, "endpoints.0.adresses", ["10.1.0.9"]), "endpoints[0].adresses: unknown field"),
])
def test_schema_errors_agree_with_kubernetes(obj: JSON, field: str) -> None:
    assert not k8s_accepts(obj)
    assert any(e.startswith(field) for e in map(str, strict_errors(obj))), strict_errors(obj)


# Refused by the API server's validation (beyond the schema): named field and reason.
@pytest.mark.parametrize("obj,expected", [
    (with_(LB, "metadata.name", "9web"), "metadata.name: '9web' must be a DNS-1035 label"),
    (with_(LB, "spec.type", "Magic"), "spec.type: Input should be 'ClusterIP', 'NodePort', 'LoadBalancer' or "
                                      "'ExternalName'"),
    (with_(LB, "spec.ports.1.name", None), "spec.ports[1].name: required when a service has several ports"),
    (with_(LB, "spec.ports.1.name", "http"), "spec.ports[1].name: duplicate value 'http'"),
    (with_(LB, "spec.ports.1", {"name": "x", "port": 80, "nodePort": 30081}), "spec.ports[1]: duplicate port 80/TCP"),
    (with_(LB, "spec.ports.0.port", 70000), "spec.ports[0].port: 70000 must be between 1 and 65535"),
    (with_(LB, "spec.ports.0.protocol", "ICMP"), "spec.ports[0].protocol: Input should be 'TCP', 'UDP' or 'SCTP'"),
    (with_(LB, "spec.ports.0.targetPort", "8080"), "spec.ports[0].targetPort: '8080' must contain at least one letter"),
    (with_(LB, "spec.ports.0.targetPort", 0x10000), "spec.ports[0].targetPort: 65536 must be between 1 and 65535"),
    (with_(LB, "spec.ports.0.name", "HTTP"), "spec.ports[0].name: 'HTTP' must consist of lower case"),
    (with_(LB, "spec.clusterIP", "10.96.0.300"), "spec.clusterIPs[0]: '10.96.0.10' must match clusterIP"),
    (with_(with_(LB, "spec.clusterIPs", None), "spec.clusterIP", "10.96.0.300"),
     "spec.clusterIPs[0]: '10.96.0.300' must be a valid IP address"),
    (with_(LB, "spec.externalIPs", ["127.0.0.1"]), "spec.externalIPs[0]: '127.0.0.1' may not be in the loopback"),
    (with_(LB, "spec.externalIPs", ["x"]), "spec.externalIPs[0]: 'x' must be a valid IP address"),
    (with_(LB, "spec.sessionAffinityConfig.clientIP.timeoutSeconds", 86401),
     "spec.sessionAffinityConfig.clientIP.timeoutSeconds: 86401 must be greater than 0"),
    (with_(LB, "spec.sessionAffinity", "None"), "spec.sessionAffinityConfig: must not be set when sessionAffinity"),
    (with_(LB, "spec.externalTrafficPolicy", "Nearby"), "spec.externalTrafficPolicy: Input should be 'Cluster' or"),
    (with_(LB, "spec.externalTrafficPolicy", "Cluster"), "spec.healthCheckNodePort: may only be set when type is"),
    (with_(LB, "status.loadBalancer.ingress.0.ip", "203.0.113"),
     "status.loadBalancer.ingress[0].ip: '203.0.113' must be a valid IP address"),
    (with_(LB, "spec.loadBalancerSourceRanges", ["nope"]), "spec.loadBalancerSourceRanges[0]: 'nope' must be"),
    (with_(HEADLESS, "spec.type", "NodePort"), "spec.clusterIP: may not be 'None' for NodePort services"),
    (with_(HEADLESS, "spec.clusterIP", "10.96.0.12"), "spec.ports: required"),
    (with_(HEADLESS, "spec.ports", [{"port": 80, "nodePort": 30080}]),
     "spec.ports[0].nodePort: may not be used when type is ClusterIP"),
    (with_(HEADLESS, "spec.externalTrafficPolicy", "Local"),
     "spec.externalTrafficPolicy: may only be set for externally-accessible services"),
    (with_(EXTERNAL_NAME, "spec.externalName", None), "spec.externalName: required"),
    (with_(EXTERNAL_NAME, "spec.clusterIP", "10.96.0.13"), "spec.clusterIP: must be empty for services of type "
                                                           "ExternalName"),
    (with_(EXTERNAL_NAME, "spec", None), "spec: Field required"),
    (with_(SLICE, "addressType", "IPv5"), "addressType: Input should be 'IPv4', 'IPv6' or 'FQDN'"),
    (with_(SLICE, "endpoints.0.addresses", []), "endpoints[0].addresses: must have between 1 and 100"),
    (with_(SLICE, "endpoints.0.addresses", ["fd00::1"]), "endpoints[0].addresses[0]: 'fd00::1' must be a valid IPv4"),
    (with_(SLICE, "endpoints.0.nodeName", "Node_A"), "endpoints[0].nodeName: 'Node_A' must consist of lower case"),
    (with_(SLICE, "endpoints.0.hints.forZones", [{"name": f"z{i}"} for i in range(9)]),
     "endpoints[0].hints.forZones: must have at most 8 items"),
    (with_(SLICE, "ports.1.name", "http"), "ports[1].name: duplicate value 'http'"),
    (with_(SLICE, "ports.0.port", 65536), "ports[0].port: 65536 must be between 0 and 65535"),
    (with_(SLICE, "metadata.name", "Web"), "metadata.name: 'Web' must consist of lower case"),
])
def test_api_server_rules_refuse_naming_field_and_reason(obj: JSON, expected: str) -> None:
    found = errors(obj)
    assert any(e.startswith(expected) for e in found), found


def test_standalone_needs_stated_cluster_ip_and_node_ports() -> None:
    bare = with_(with_(LB, "spec.clusterIP", None), "spec.clusterIPs", None)
    bare = with_(bare, "spec.ports.1.nodePort", None)
    assert [e.split(":")[0] for e in service(bare).unallocated()] == ["spec.clusterIP", "spec.ports[1].nodePort"]
    no_node_ports = with_(with_(bare, "spec.allocateLoadBalancerNodePorts", False), "spec.clusterIP", "10.96.0.10")
    assert service(no_node_ports).unallocated() == []
    assert service(HEADLESS).unallocated() == []
    assert service(EXTERNAL_NAME).unallocated() == []
