"""Kubernetes-format models: real objects parse, invalid ones fail naming path and reason."""

from __future__ import annotations

from typing import Any

import pytest

from membrane.k8s_models import (
    NamedPort,
    Namespace,
    NetworkPolicy,
    ObjectRef,
    ObjectValidationError,
    Pod,
    parse_object,
)


def policy(spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "np", "namespace": "prod", **meta},
        "spec": spec,
    }


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ObjectValidationError) as info:
        parse_object(data)
    return [str(e) for e in info.value.errors]


REAL_POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "web-7d4b9c-x2x",
        "namespace": "prod",
        "uid": "1234",
        "resourceVersion": "42",
        "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d4b9c"}],
        "managedFields": [{"manager": "kubelet"}],
    },
    "spec": {
        "nodeName": "node-1",
        "containers": [
            {
                "name": "web",
                "image": "nginx",
                "ports": [
                    {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                    {"containerPort": 9000},
                ],
            }
        ],
        "initContainers": [
            {"name": "sidecar", "restartPolicy": "Always", "ports": [{"name": "metrics", "containerPort": 9090}]},
            {"name": "setup", "ports": [{"name": "ignored", "containerPort": 1}]},
        ],
    },
    "status": {
        "phase": "Running",
        "podIP": "10.0.1.5",
        "podIPs": [{"ip": "10.0.1.5"}, {"ip": "fd00::5"}],
        "hostIP": "192.168.1.10",
        "conditions": [{"type": "Ready", "status": "True"}],
    },
}


def test_real_pod_parses_ignoring_unknown_fields() -> None:
    pod = parse_object(REAL_POD)
    assert isinstance(pod, Pod)
    assert pod.ref == ObjectRef("prod", "web-7d4b9c-x2x")
    assert pod.ips == ("10.0.1.5", "fd00::5")
    assert pod.status.host_ip == "192.168.1.10"
    assert pod.named_ports() == (
        NamedPort("dns", "UDP", 53),
        NamedPort("http", "TCP", 8080),
        NamedPort("metrics", "TCP", 9090),
    )
    assert pod.spec.containers[0].ports[2].protocol == "TCP"


def test_populate_by_name_and_null_fields() -> None:
    pod = Pod.model_validate(
        {"metadata": {"name": "p", "labels": None}, "status": {"pod_ip": "10.0.0.1"}}
    )
    assert pod.status.pod_ip == "10.0.0.1"
    assert pod.metadata.labels == {}
    assert pod.ref == ObjectRef("default", "p")


def test_namespace() -> None:
    ns = parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod", "labels": {"team": "a"}}})
    assert isinstance(ns, Namespace)
    assert ns.ref == ObjectRef("", "prod")
    assert errors_of({"kind": "Namespace", "metadata": {"name": "Bad_Name"}})[0].startswith(
        "metadata.name"
    )


def test_full_network_policy() -> None:
    np = parse_object(
        policy(
            {
                "podSelector": {"matchLabels": {"app": "db"}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [
                            {"ipBlock": {"cidr": "172.17.0.0/16", "except": ["172.17.1.0/24"]}},
                            {"namespaceSelector": {"matchLabels": {"project": "x"}}},
                            {
                                "namespaceSelector": {},
                                "podSelector": {
                                    "matchExpressions": [
                                        {"key": "role", "operator": "In", "values": ["fe", "be"]}
                                    ]
                                },
                            },
                        ],
                        "ports": [{"protocol": "TCP", "port": 6379}, {"port": "metrics"}],
                    }
                ],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": 32000, "endPort": 32768}]}],
            }
        )
    )
    assert isinstance(np, NetworkPolicy)
    rule = np.spec.ingress[0]  # type: ignore[index]
    assert rule.from_[0].ip_block is not None and rule.from_[0].ip_block.except_ == ["172.17.1.0/24"]
    assert rule.from_[2].namespace_selector is not None
    assert rule.ports[1].port == "metrics" and rule.ports[1].protocol == "TCP"
    assert np.spec.egress[0].ports[0].end_port == 32768  # type: ignore[index]
    assert np.ref == ObjectRef("prod", "np")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, ("Ingress",)),
        ({"ingress": [{}]}, ("Ingress",)),
        ({"egress": []}, ("Ingress",)),
        ({"egress": [{}]}, ("Ingress", "Egress")),
        ({"policyTypes": ["Egress"], "ingress": [{}]}, ("Egress",)),
    ],
)
def test_policy_types_defaulting(spec: dict[str, Any], expected: tuple[str, ...]) -> None:
    np = parse_object(policy(spec))
    assert isinstance(np, NetworkPolicy)
    assert np.spec.effective_policy_types() == expected


def test_missing_pod_selector_selects_all_like_go_decoding() -> None:
    np = parse_object(policy({"ingress": []}))
    assert isinstance(np, NetworkPolicy)
    assert np.spec.pod_selector.match_labels == {} and np.spec.pod_selector.match_expressions == []


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
         "spec.ingress[0].from[0].ipBlock.cidr", "not a valid CIDR"),
        ({"ingress": [{"from": [{"ipBlock": {"cidr": "banana"}}]}]},
         "spec.ingress[0].from[0].ipBlock.cidr", "not a valid CIDR"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
         "spec.egress[0].to[0].ipBlock.except[0]", "strict subset"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}]}]},
         "spec.egress[0].to[0].ipBlock.except[0]", "strict subset"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}]}]},
         "spec.egress[0].to[0].ipBlock.except[0]", "strict subset"),
        ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["x"]}}]}]},
         "spec.egress[0].to[0].ipBlock.except[0]", "not a valid CIDR"),
        ({"ingress": [{"ports": [{"port": 0}]}]}, "spec.ingress[0].ports[0].port", "between 1 and 65535"),
        ({"ingress": [{"ports": [{"port": 65536}]}]}, "spec.ingress[0].ports[0].port", "between 1 and 65535"),
        ({"ingress": [{"ports": [{"port": 80, "endPort": 79}]}]},
         "spec.ingress[0].ports[0].endPort", "greater than or equal to port 80"),
        ({"ingress": [{"ports": [{"port": 80, "endPort": 70000}]}]},
         "spec.ingress[0].ports[0].endPort", "between 1 and 65535"),
        ({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
         "spec.ingress[0].ports[0].endPort", "named port"),
        ({"ingress": [{"ports": [{"endPort": 90}]}]},
         "spec.ingress[0].ports[0].endPort", "port is not specified"),
        ({"ingress": [{"ports": [{"port": "HTTP"}]}]}, "spec.ingress[0].ports[0].port", "lower-case"),
        ({"ingress": [{"ports": [{"port": "8080"}]}]}, "spec.ingress[0].ports[0].port", "at least one letter"),
        ({"ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]},
         "spec.ingress[0].ports[0].protocol", "'TCP', 'UDP' or 'SCTP'"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}},
         "spec.podSelector.matchExpressions[0].operator", "'In', 'NotIn', 'Exists' or 'DoesNotExist'"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
         "spec.podSelector.matchExpressions[0].values", "must be empty"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}},
         "spec.podSelector.matchExpressions[0].values", "must be non-empty"),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn"}]}},
         "spec.podSelector.matchExpressions[0].values", "must be non-empty"),
        ({"podSelector": {"matchExpressions": [{"key": "-bad", "operator": "Exists"}]}},
         "spec.podSelector.matchExpressions[0].key", "name part"),
        ({"podSelector": {"matchLabels": {"app": "x" * 64}}}, "spec.podSelector.matchLabels", "63"),
        ({"podSelector": {"matchLabels": {"Bad.Prefix/app": "x"}}}, "spec.podSelector.matchLabels", "prefix part"),
        ({"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"a": "b c"}}}]}]},
         "spec.ingress[0].from[0].namespaceSelector.matchLabels", "must be empty or consist"),
        ({"ingress": [{"from": [{}]}]}, "spec.ingress[0].from[0]", "must specify a peer"),
        ({"ingress": [{"from": [{"podSelector": {}, "ipBlock": {"cidr": "1.2.3.0/24"}}]}]},
         "spec.ingress[0].from[0].ipBlock", "may not be combined"),
        ({"policyTypes": ["Ingress", "Sideways"]}, "spec.policyTypes[1]", "'Ingress' or 'Egress'"),
        ({"policyTypes": ["Ingress", "Ingress"]}, "spec.policyTypes", "duplicate"),
    ],
)
def test_policy_validation_errors(spec: dict[str, Any], path: str, reason: str) -> None:
    errors = errors_of(policy(spec))
    assert any(e.startswith(path + ":") and reason in e for e in errors), errors


def test_several_errors_reported_at_once_with_object_name() -> None:
    with pytest.raises(ObjectValidationError) as info:
        parse_object(policy({"ingress": [{"ports": [{"port": 0}, {"protocol": "GRE"}]}]}))
    assert len(info.value.errors) == 2
    assert "NetworkPolicy 'prod/np'" in str(info.value)


def test_host_bits_in_cidr_are_accepted_and_masked() -> None:
    np = parse_object(policy({"ingress": [{"from": [{"ipBlock": {"cidr": "10.1.2.3/8"}}]}]}))
    assert isinstance(np, NetworkPolicy)
    assert str(np.spec.ingress[0].from_[0].ip_block.network) == "10.0.0.0/8"  # type: ignore[index,union-attr]


def test_pod_validation_errors() -> None:
    bad = {
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "-x"}},
        "spec": {"containers": [{"name": "c", "ports": [
            {"name": "http", "containerPort": 70000},
            {"name": "http", "containerPort": 80, "protocol": "ICMP"},
        ]}]},
        "status": {"podIP": "10.0.0.300"},
    }
    errors = errors_of(bad)
    joined = "\n".join(errors)
    assert "metadata.labels: value '-x'" in joined
    assert "spec.containers[0].ports[0].containerPort: 70000 must be between" in joined
    assert "spec.containers[0].ports[1].protocol" in joined
    assert "status.podIP: '10.0.0.300' is not a valid IP address" in joined


def test_duplicate_container_port_names_rejected() -> None:
    errors = errors_of({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "c", "ports": [{"name": "a", "containerPort": 1}, {"name": "a", "containerPort": 2}]}]}})
    assert errors == ["spec.containers[0].ports[1].name: duplicate port name 'a'"]


def test_unknown_kind_and_api_version() -> None:
    with pytest.raises(ObjectValidationError,
                       match="unknown kind 'ConfigMap'.*supported: CIDRDenyList, EndpointSlice, Namespace, NetworkPolicy, Node, PacketFilter, Pod, Service"):
        parse_object({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s"}})
    with pytest.raises(ObjectValidationError, match="kind: required"):
        parse_object({"metadata": {"name": "s"}})
    with pytest.raises(ObjectValidationError, match="apiVersion: NetworkPolicy must be 'networking.k8s.io/v1'"):
        parse_object({"apiVersion": "extensions/v1beta1", "kind": "NetworkPolicy", "metadata": {"name": "s"}})
    with pytest.raises(ObjectValidationError, match="metadata.name: required"):
        parse_object({"kind": "NetworkPolicy", "metadata": {}})
    with pytest.raises(ObjectValidationError, match="must be a mapping"):
        parse_object([])  # type: ignore[arg-type]


def test_models_are_immutable() -> None:
    ns = parse_object({"kind": "Namespace", "metadata": {"name": "a"}})
    with pytest.raises(ValueError):  # pydantic's ValidationError for a frozen model
        ns.metadata = None  # type: ignore[misc,assignment]


def test_object_ref() -> None:
    assert str(ObjectRef("a", "b")) == "a/b"
    assert str(ObjectRef("", "b")) == "b"
    assert ObjectRef.parse("a/b") == ObjectRef("a", "b")
    assert ObjectRef.parse("b") == ObjectRef("", "b")


# --- Node (standalone mode's view of the other nodes) ----------------------------------------


def test_node_gives_tunnel_addresses_and_pod_cidrs() -> None:
    from membrane.k8s_models import Node

    node = parse_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"},
                         "spec": {"podCIDR": "10.1.2.0/24", "podCIDRs": ["10.1.2.0/24", "fd00:2::/64"]},
                         "status": {"addresses": [{"type": "Hostname", "address": "10.9.9.9"},
                                                  {"type": "ExternalIP", "address": "198.51.100.2"},
                                                  {"type": "InternalIP", "address": "192.0.2.2"}]}})
    assert isinstance(node, Node) and node.ref.namespace == ""
    assert node.tunnel_addresses == ("192.0.2.2", "198.51.100.2")  # InternalIP first, Hostname is no address of its own
    assert node.pod_cidr_list == ("10.1.2.0/24", "fd00:2::/64")


@pytest.mark.parametrize("bad, field", [
    ({"spec": {"podCIDR": "10.1.2.0/33"}}, "spec.podCIDR"),
    ({"status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.300"}]}}, "status.addresses[0].address"),
    ({"metadata": {"name": "Bad_Name"}}, "metadata"),
])
def test_node_bad_fields_are_named(bad: dict, field: str) -> None:  # type: ignore[type-arg]
    data = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}, **bad}
    with pytest.raises(ObjectValidationError) as err:
        parse_object(data)
    assert field in str(err.value), str(err.value)
