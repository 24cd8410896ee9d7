"""The desired state stream content, computed from the cached API objects (pure).

Every replica computes it the same way from the same objects, so a failover changes nothing
an agent sees except the stream id. Identities come from the MembraneIdentity objects (the
leader's writes, read back through the watch), so an endpoint appears once its identity is
known cluster-wide, never with a number that could still change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from membrane.api.state_objects import (
    EndpointState,
    IdentityState,
    NamedPortState,
    NamespaceState,
    NodeState,
    PolicyState,
    StateKey,
    StateObject,
)
from membrane.identities import LabelSet, filter_pod_labels
from membrane.labels import namespace_labels
from membrane.operator.identity_syncing import parse_identity
from membrane.operator.pod_cidr_syncing import node_pod_cidr
from membrane.operator.pod_facts import labels_of, meta, needs_identity, pod_identity_labels, pod_ips

JSON = dict[str, Any]
_ADDRESS_ORDER = {"InternalIP": 0, "ExternalIP": 1}


def node_state(node: JSON) -> NodeState:
    addresses = sorted(((node.get("status") or {}).get("addresses") or []),
                       key=lambda a: _ADDRESS_ORDER.get(a.get("type", ""), 9))
    ips = tuple(a["address"] for a in addresses
                if a.get("type") in _ADDRESS_ORDER and a.get("address"))
    return NodeState(meta(node).get("name", ""), ips, node_pod_cidr(node))


def named_ports(pod: JSON) -> tuple[NamedPortState, ...]:
    ports = set()
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") and port.get("containerPort"):
                ports.add(NamedPortState(port["name"], port.get("protocol") or "TCP",
                                         int(port["containerPort"])))
    return tuple(sorted(ports, key=lambda p: (p.name, p.protocol, p.port)))


def policy_state(policy: JSON) -> PolicyState:
    """The policy without what changes on every write (resourceVersion, status, managed
    fields), so only real changes reach the agents."""
    m = meta(policy)
    trimmed = {
        "apiVersion": policy.get("apiVersion", "networking.k8s.io/v1"),
        "kind": policy.get("kind", "NetworkPolicy"),
        "metadata": {k: m[k] for k in ("name", "namespace", "uid", "labels", "generation")
                     if k in m},
        "spec": policy.get("spec") or {},
    }
    return PolicyState(m.get("namespace", ""), m.get("name", ""),
                       json.dumps(trimmed, sort_keys=True, separators=(",", ":")))


def build_state(namespaces: Iterable[JSON], nodes: Iterable[JSON], pods: Iterable[JSON],
                valid_policies: Iterable[JSON],
                identity_objects: Iterable[JSON]) -> dict[StateKey, StateObject]:
    state: dict[StateKey, StateObject] = {}

    def put(obj: StateObject) -> None:
        state[(obj.kind, obj.key)] = obj

    by_name = {meta(ns).get("name", ""): ns for ns in namespaces}
    for name, ns in by_name.items():
        put(NamespaceState.of(name, namespace_labels(name, labels_of(ns))))
    for node in nodes:
        put(node_state(node))
    numbers: dict[LabelSet, int] = {}
    for obj in identity_objects:
        parsed = parse_identity(obj)
        if parsed is not None:
            identity, labels = parsed
            numbers[labels] = identity
            put(IdentityState(identity, tuple(labels.to_strings())))
    for pod in pods:
        ips = pod_ips(pod)
        node_name = (pod.get("spec") or {}).get("nodeName", "")
        if not ips or not node_name or not needs_identity(pod):
            continue
        labels = pod_identity_labels(pod, by_name)
        identity = numbers.get(labels) if labels is not None else None
        if identity is None:
            continue  # shown once the leader has allocated (and written) its identity
        m = meta(pod)
        put(EndpointState(m.get("namespace", ""), m.get("name", ""), ips, identity, node_name,
                          tuple(sorted(filter_pod_labels(labels_of(pod)).items())),
                          named_ports(pod), m.get("uid", "")))
    for policy in valid_policies:
        put(policy_state(policy))
    return state
