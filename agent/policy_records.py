"""Stream records -> the policy manager: the manager the consumer calls for policy's kinds.

Registered with the consumer (agent/state_consuming.py) for namespaces, nodes, identities,
endpoints and policies. Each record is handed over as the record it is (namespace labels, an
endpoint as a `PodRecord`, identities into `StreamIdentities`); no Pod object is rebuilt from
a record. Another node's record is its tunnel endpoint and pod CIDR; this node's own record
is for IPAM (`NodeCidrs`), not for policy.

A local pod's endpoint may be deleted from the stream before its sandbox is gone (a cluster's
operator stops streaming a terminating pod): its last identity and labels stay enforced until
the endpoint itself goes (CNI DEL, `endpoint_removed`), so a terminating pod is never demoted
to INIT.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network

from membrane.api.state_objects import (
    EndpointState,
    IdentityState,
    Kind,
    NamespaceState,
    NodeState,
    PolicyState,
    StateObject,
)
from membrane.k8s_models import NetworkPolicy, ObjectRef, parse_object

from .identity_sources import StreamIdentities
from .pod_records import endpoint_record
from .policy_syncing import PolicyManager

log = logging.getLogger("membrane.state")

POLICY_KINDS = (Kind.NAMESPACE, Kind.NODE, Kind.IDENTITY, Kind.ENDPOINT, Kind.POLICY)


def policy_model(state: PolicyState) -> NetworkPolicy:
    obj = parse_object(json.loads(state.object_json))
    if not isinstance(obj, NetworkPolicy):
        raise ValueError(f"policy {state.key} is a {type(obj).__name__}")
    return obj


class PolicyRecords:
    """The policy manager as a record manager. `apply_maps` writes its pending difference
    (the agent's policy apply: metrics, held maps); `resync` compares with the kernel."""

    def __init__(self, node_name: str, policy: PolicyManager, identities: StreamIdentities,
                 apply_maps: Callable[[], object] | None = None) -> None:
        self.node_name = node_name
        self.policy = policy
        self.identities = identities
        self.apply_maps = apply_maps or policy.apply
        self.lingering: set[ObjectRef] = set()  # deleted from the stream, still wired here

    def on_update(self, kind: Kind, key: str, obj: StateObject | None) -> None:
        if kind is Kind.NAMESPACE:
            self.policy.on_namespace(key, dict(obj.labels) if isinstance(obj, NamespaceState) else None)
        elif kind is Kind.NODE:
            if key != self.node_name:  # another node: its IP is the tunnel endpoint of its pods
                node = obj if isinstance(obj, NodeState) else None
                self.policy.on_node(key, node.addresses if node is not None else (),
                                    node.pod_cidr if node is not None else None)
        elif kind is Kind.IDENTITY:
            if isinstance(obj, IdentityState):
                self.identities.set_identity(obj.id, obj.labels)
            else:
                self.identities.forget_identity(int(key))
        elif kind is Kind.ENDPOINT:
            self._endpoint(ObjectRef.parse(key), obj if isinstance(obj, EndpointState) else None)
        elif kind is Kind.POLICY:
            self.policy.on_policy(ObjectRef.parse(key), policy_model(obj) if isinstance(obj, PolicyState) else None)

    def _endpoint(self, ref: ObjectRef, obj: EndpointState | None) -> None:
        if obj is None:
            if self.policy.is_local(ref) and ref not in self.lingering:
                # Terminating but still wired here: keep its last identity and labels until CNI DEL.
                self.lingering.add(ref)
                return
            self.lingering.discard(ref)
            self.identities.forget_pod(ref)
            self.policy.on_pod(ref, None)
            return
        self.lingering.discard(ref)
        self.identities.set_pod(ref, obj.identity)
        self.policy.on_pod(ref, endpoint_record(obj))

    def endpoint_removed(self, ref: ObjectRef) -> None:
        """The local endpoint is gone (CNI DEL): forget a pod the stream already deleted."""
        if ref in self.lingering:
            self.lingering.discard(ref)
            self.identities.forget_pod(ref)
            self.policy.on_pod(ref, None)

    def apply(self) -> object:
        return self.apply_maps()

    def resync(self) -> Mapping[str, int]:
        return self.policy.resync()


class NodeCidrs:
    """This node's own record: its PodCIDR goes to IPAM (`on_pod_cidr`) when it changes."""

    def __init__(self, node_name: str, on_pod_cidr: Callable[[IPv4Network], None],
                 pod_cidr: IPv4Network | None = None) -> None:
        self.node_name = node_name
        self.on_pod_cidr = on_pod_cidr
        self.pod_cidr = pod_cidr
        self.announced = False

    def on_update(self, kind: Kind, key: str, obj: StateObject | None) -> None:
        if key != self.node_name or not isinstance(obj, NodeState) or not obj.pod_cidr:
            return
        try:
            cidr = IPv4Network(obj.pod_cidr)
        except ValueError:
            log.warning("node PodCIDR is not IPv4", extra={"fields": {"pod_cidr": obj.pod_cidr}})
            return
        if cidr != self.pod_cidr:
            if self.pod_cidr is not None:
                log.warning("node PodCIDR changed", extra={"fields": {"old": str(self.pod_cidr), "new": str(cidr)}})
            self.pod_cidr = cidr
            self.announced = True
            self.on_pod_cidr(cidr)

    def announce(self) -> None:
        """Hand over the PodCIDR known from the start (configured), once."""
        if self.pod_cidr is not None and not self.announced:
            self.announced = True
            self.on_pod_cidr(self.pod_cidr)

    def apply(self) -> None:
        return None  # handed over at once: IPAM is no map
