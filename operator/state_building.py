"""The desired state stream content, computed from the cached API objects (pure).

Every replica computes it the same way from the same objects, so a failover changes nothing
an agent sees except the stream id. Identities come from the MembraneIdentity objects (the
leader's writes, read back through the watch), so an endpoint appears once its identity is
known cluster-wide, never with a number that could still change.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from membrane.api.state_objects import (
    CIDRDenyChunkState,
    EndpointState,
    IdentityState,
    Kind,
    NamedPortState,
    NamespaceState,
    NodeState,
    PacketFilterState,
    PolicyState,
    StateKey,
    StateObject,
)
from membrane.identities import LabelSet, filter_pod_labels, identity_labels
from membrane.k8s_models import FieldError
from membrane.labels import namespace_labels
from membrane.operator.cidr_pool import node_pod_cidr
from membrane.operator.identity_objects import parse_identity
from membrane.operator.pod_facts import _address, labels_of, meta, needs_identity, pod_identity_labels, pod_ips
from membrane.operator.service_records import endpoint_slice_state, service_state
from membrane.prefilter_checking import object_errors
from membrane.prefilter_chunking import BUCKETS
from membrane.prefilter_chunking import split as split_deny_list
from membrane.prefilter_objects import CIDR_DENY_LIST, PACKET_FILTER, canonical_json, canonical_spec

JSON = dict[str, Any]
_ADDRESS_ORDER = {"InternalIP": 0, "ExternalIP": 1}


def node_state(node: JSON) -> NodeState:
    addresses = sorted(((node.get("status") or {}).get("addresses") or []),
                       key=lambda a: _ADDRESS_ORDER.get(a.get("type", ""), 9))
    ips = tuple(a["address"] for a in addresses
                if a.get("type") in _ADDRESS_ORDER and a.get("address")
                and _address(a["address"]) == a["address"])  # malformed addresses left out
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


def _lenient_errors(obj: JSON) -> list[FieldError]:
    # Read back from the API server, which pruned unknown fields: they are no error here.
    return object_errors(obj, strict=False)


def packet_filter_state(obj: JSON) -> PacketFilterState:
    """A checked PacketFilter as the stream carries it (its spec in canonical form)."""
    m = meta(obj)
    return PacketFilterState(m.get("name", ""), int(m.get("generation") or 0),
                             canonical_json(canonical_spec(PACKET_FILTER, obj.get("spec") or {})))


def cidr_deny_list_cidrs(obj: JSON) -> tuple[str, ...]:
    return tuple(canonical_spec(CIDR_DENY_LIST, obj.get("spec") or {})["cidrs"])


def build_state(namespaces: Iterable[JSON], nodes: Iterable[JSON], pods: Iterable[JSON],
                valid_policies: Iterable[JSON],
                identity_objects: Iterable[JSON], services: Iterable[JSON] = (),
                endpoint_slices: Iterable[JSON] = ()) -> dict[StateKey, StateObject]:
    """The whole desired state from scratch (what `StateBuilder` keeps up to date)."""
    builder = StateBuilder()
    builder.load(namespaces, nodes, pods, valid_policies, identity_objects, services=services,
                 endpoint_slices=endpoint_slices)
    return dict(builder.state)


def _key(obj: JSON) -> str:
    m = meta(obj)
    namespace = m.get("namespace")
    return f"{namespace}/{m.get('name', '')}" if namespace else str(m.get("name", ""))


class StateBuilder:
    """The desired state, updated object by object: a change costs what it touches.

    A pod change recomputes that pod's endpoint; a namespace change, the pods of that
    namespace (their identity labels include the namespace's); an identity change, the pods
    holding those labels; a node, policy, Service or EndpointSlice change, that object. Indexes (pods by namespace, by
    identity labels) make those lookups direct. `update` returns the keys it touched with
    their new objects (None: gone), which is what `StateLog.apply` takes; unchanged entries
    are dropped there. `load` from scratch gives the same result as any sequence of updates
    (the operator checks that periodically).

    Two MembraneIdentity objects with the same labels (a split-brain leader wrote a second
    one) resolve to the lowest number, on every replica alike.

    `implicit_namespaces` (standalone's local source, where no API server makes a namespace
    exist before its pods): a pod whose namespace is not known takes empty namespace labels
    instead of waiting for the namespace.
    """

    def __init__(self, policy_valid: Callable[[JSON], bool] = lambda _p: True,
                 prefilter_errors: Callable[[JSON], list[FieldError]] = _lenient_errors,
                 implicit_namespaces: bool = False) -> None:
        self.policy_valid = policy_valid
        # PacketFilter/CIDRDenyList problems (the API server's schema, checked again: an object
        # written before the schema tightened is left out, never streamed half-understood).
        self.prefilter_errors = prefilter_errors
        self.implicit_namespaces = implicit_namespaces
        self.state: dict[StateKey, StateObject] = {}
        self.counts: Counter[Kind] = Counter()
        self._namespaces: dict[str, JSON] = {}
        self._pods: dict[str, JSON] = {}
        self._pods_by_ns: dict[str, set[str]] = {}
        self.pod_labels: dict[str, LabelSet] = {}  # pods that need an identity -> its labels
        self._pods_by_labels: dict[LabelSet, set[str]] = {}
        self._identities: dict[str, tuple[int, LabelSet]] = {}  # object name -> parsed
        self._numbers: dict[LabelSet, set[int]] = {}
        self._touched: set[StateKey] = set()
        # Pods whose entry in `pod_labels` may have changed since the last `take_changes()`: an
        # identity allocator that reads them first compares only these, not every pod.
        self.labels_touched: set[str] = set()

    # --- reading ------------------------------------------------------------------------------
    def identities(self) -> dict[int, LabelSet]:
        """Parsed MembraneIdentity objects: number -> labels."""
        return dict(self._identities.values())

    # --- feeding ------------------------------------------------------------------------------
    def load(self, namespaces: Iterable[JSON], nodes: Iterable[JSON], pods: Iterable[JSON],
             policies: Iterable[JSON], identity_objects: Iterable[JSON],
             packet_filters: Iterable[JSON] = (), cidr_deny_lists: Iterable[JSON] = (),
             services: Iterable[JSON] = (), endpoint_slices: Iterable[JSON] = ()) -> None:
        for obj in namespaces:
            self.set_namespace(_key(obj), obj)
        for obj in nodes:
            self.set_node(_key(obj), obj)
        for obj in identity_objects:
            self.set_identity(_key(obj), obj)
        for obj in pods:
            self.set_pod(_key(obj), obj)
        for obj in policies:
            self.set_policy(_key(obj), obj)
        for obj in packet_filters:
            self.set_packet_filter(_key(obj), obj)
        for obj in cidr_deny_lists:
            self.set_cidr_deny_list(_key(obj), obj)
        for obj in services:
            self.set_service(_key(obj), obj)
        for obj in endpoint_slices:
            self.set_endpoint_slice(_key(obj), obj)

    def take_changes(self) -> dict[StateKey, StateObject | None]:
        """The keys touched since the last call, with their current object (None: deleted)."""
        touched, self._touched = self._touched, set()
        self.labels_touched = set()
        return {key: self.state.get(key) for key in touched}

    def set_namespace(self, name: str, obj: JSON | None) -> None:
        if obj is None:
            self._namespaces.pop(name, None)
            self._delete((Kind.NAMESPACE, name))
        else:
            self._namespaces[name] = obj
            self._put(NamespaceState.of(name, namespace_labels(name, labels_of(obj))))
        for pod in list(self._pods_by_ns.get(name, ())):
            self._pod_changed(pod)

    def set_node(self, name: str, obj: JSON | None) -> None:
        if obj is None:
            self._delete((Kind.NODE, name))
        else:
            self._put(node_state(obj))

    def set_identity(self, name: str, obj: JSON | None) -> None:
        old = self._identities.pop(name, None)
        new = parse_identity(obj) if obj is not None else None
        if old is not None:
            number, labels = old
            numbers = self._numbers.get(labels, set())
            numbers.discard(number)
            if not numbers:
                self._numbers.pop(labels, None)
            self._delete((Kind.IDENTITY, str(number)))
        if new is not None:
            number, labels = new
            self._identities[name] = new
            self._numbers.setdefault(labels, set()).add(number)
            self._put(IdentityState(number, tuple(labels.to_strings())))
        for labels in {x[1] for x in (old, new) if x is not None}:
            for pod in list(self._pods_by_labels.get(labels, ())):
                self._pod_changed(pod)

    def set_pod(self, key: str, obj: JSON | None) -> None:
        old = self._pods.get(key)
        if old is not None:
            old_ns = meta(old).get("namespace", "")
            self._pods_by_ns.get(old_ns, set()).discard(key)
        if obj is None:
            self._pods.pop(key, None)
        else:
            self._pods[key] = obj
            self._pods_by_ns.setdefault(meta(obj).get("namespace", ""), set()).add(key)
        self._pod_changed(key)

    def set_policy(self, key: str, obj: JSON | None) -> None:
        if obj is not None and self.policy_valid(obj):
            self._put(policy_state(obj))
        else:
            self._delete((Kind.POLICY, key))

    def set_packet_filter(self, name: str, obj: JSON | None) -> None:
        if obj is not None and not self.prefilter_errors(obj):
            self._put(packet_filter_state(obj))
        else:
            self._delete((Kind.PACKET_FILTER, name))

    def set_cidr_deny_list(self, name: str, obj: JSON | None) -> None:
        # Streamed as a head and up to BUCKETS chunks (membrane/prefilter_chunking.py): an edit
        # changes the head and the chunks whose prefixes changed, nothing else.
        chunks: list[CIDRDenyChunkState] = []
        if obj is not None and not self.prefilter_errors(obj):
            head, chunks = split_deny_list(name, int(meta(obj).get("generation") or 0), cidr_deny_list_cidrs(obj))
            self._put(head)
        else:
            self._delete((Kind.CIDR_DENY_LIST, name))
        kept = {chunk.bucket for chunk in chunks}
        for bucket in range(BUCKETS):
            key = (Kind.CIDR_DENY_CHUNK, f"{name}/{bucket}")
            if bucket not in kept and key in self.state:
                self._delete(key)
        for chunk in chunks:
            self._put(chunk)

    def set_service(self, key: str, obj: JSON | None) -> None:
        if obj is None:
            self._delete((Kind.SERVICE, key))
        else:
            self._put(service_state(obj))

    def set_endpoint_slice(self, key: str, obj: JSON | None) -> None:
        if obj is None:
            self._delete((Kind.ENDPOINTSLICE, key))
        else:
            self._put(endpoint_slice_state(obj))

    # --- internals ----------------------------------------------------------------------------
    def _put(self, obj: StateObject) -> None:
        key = (obj.kind, obj.key)
        if key not in self.state:
            self.counts[obj.kind] += 1
        self.state[key] = obj
        self._touched.add(key)

    def _delete(self, key: StateKey) -> None:
        if self.state.pop(key, None) is not None:
            self.counts[key[0]] -= 1
        self._touched.add(key)

    def _pod_changed(self, key: str) -> None:
        self.labels_touched.add(key)
        old_labels = self.pod_labels.pop(key, None)
        if old_labels is not None:
            holders = self._pods_by_labels.get(old_labels)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._pods_by_labels[old_labels]
        pod = self._pods.get(key)
        endpoint = None
        if pod is not None and needs_identity(pod):
            labels = pod_identity_labels(pod, self._namespaces)
            if labels is None and self.implicit_namespaces:
                labels = identity_labels(labels_of(pod), meta(pod).get("namespace", ""), {})
            if labels is not None and labels == old_labels:
                labels = old_labels  # keep one object per label set: cheap `is` checks
            if labels is not None:
                self.pod_labels[key] = labels
                self._pods_by_labels.setdefault(labels, set()).add(key)
                endpoint = self._endpoint(pod, labels)
        if endpoint is not None:
            self._put(endpoint)
        else:
            self._delete((Kind.ENDPOINT, key))

    def _endpoint(self, pod: JSON, labels: LabelSet) -> EndpointState | None:
        ips = pod_ips(pod)
        node_name = (pod.get("spec") or {}).get("nodeName", "")
        numbers = self._numbers.get(labels)
        if not ips or not node_name or not numbers:
            return None  # shown once it has an address, a node and an allocated identity
        m = meta(pod)
        return EndpointState(m.get("namespace", ""), m.get("name", ""), ips, min(numbers),
                             node_name, tuple(sorted(filter_pod_labels(labels_of(pod)).items())),
                             named_ports(pod), m.get("uid", ""))
