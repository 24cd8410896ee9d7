"""Resolving policy incrementally: updates in, per-endpoint deltas out (pure).

`PolicyResolver` follows Calico Felix's calculation graph: each update records the new input,
works out which endpoints' results can depend on it, recomputes only those (`computing`), and
returns what changed (`PolicyDelta`). Dependencies:

- a pod update: the pod itself (as a subject) and the subjects of every policy with a peer
  that selected the old or selects the new pod (or an egress named-port rule to everyone,
  where every pod's ports count);
- a namespace update: the subjects of every policy whose namespaceSelector result for this
  namespace flips;
- a policy update: its old and new subjects; when its CIDR prefixes change the ipcache table,
  also the subjects of every policy with an ipBlock that selects a changed prefix.

`compute_policy` is the from-scratch computation; the resolver must always agree with it
(tests replay update sequences in many orders to check), and `resync()` re-derives everything
to repair drift. When applying a delta: ipcache upserts before policy upserts, policy
removals before ipcache removals, so an entry never names an identity the ipcache lacks.
"""

from __future__ import annotations

from collections.abc import Iterable

from membrane.identities import IdentityAllocator
from membrane.k8s_models import Namespace, NetworkPolicy, ObjectRef, Pod
from membrane.policy.cidrs import CidrTable
from membrane.policy.computing import PeerCache, compute_endpoint
from membrane.policy.entries import (
    DesiredPolicy,
    Direction,
    EndpointPolicy,
    PolicyDelta,
    diff_endpoint,
)
from membrane.policy.inputs import NamespaceInfo, PodInfo, PolicyInputs, as_policy
from membrane.policy.rules import CompiledPolicy

Updatable = NamespaceInfo | Namespace | PodInfo | Pod | CompiledPolicy | NetworkPolicy


def _ns_info(ns: NamespaceInfo | Namespace) -> NamespaceInfo:
    return ns if isinstance(ns, NamespaceInfo) else NamespaceInfo.from_namespace(ns)


class PolicyResolver:
    def __init__(self, cidr_allocator: IdentityAllocator | None = None) -> None:
        self.inputs = PolicyInputs()
        self.cidrs = CidrTable(cidr_allocator)
        self._endpoints: dict[ObjectRef, EndpointPolicy] = {}

    # --- reading ---------------------------------------------------------------------------

    def desired(self) -> DesiredPolicy:
        return DesiredPolicy(dict(sorted(self._endpoints.items())), self.cidrs.identities())

    def endpoint(self, ref: ObjectRef) -> EndpointPolicy | None:
        return self._endpoints.get(ref)

    # --- generic entry points ----------------------------------------------------------------

    def on_update(self, obj: Updatable, identity: int | None = None) -> PolicyDelta:
        """Add or replace an object; a `Pod` model needs its `identity`."""
        if isinstance(obj, (NamespaceInfo, Namespace)):
            return self.update_namespace(_ns_info(obj))
        if isinstance(obj, Pod):
            return self.update_pod(PodInfo.from_pod(obj, identity))
        if isinstance(obj, PodInfo):
            return self.update_pod(obj)
        return self.update_policy(obj)

    def on_delete(self, obj: Updatable) -> PolicyDelta:
        if isinstance(obj, (NamespaceInfo, Namespace)):
            return self.delete_namespace(_ns_info(obj).name)
        if isinstance(obj, (Pod, PodInfo)):
            return self.delete_pod(obj.ref)
        return self.delete_policy(obj.ref)

    # --- namespaces ----------------------------------------------------------------------------

    def update_namespace(self, ns: NamespaceInfo) -> PolicyDelta:
        old_labels = self.inputs.namespace_labels(ns.name)
        self.inputs.set_namespace(ns)
        return self._namespace_changed(ns.name, old_labels)

    def delete_namespace(self, name: str) -> PolicyDelta:
        old_labels = self.inputs.namespace_labels(name)
        self.inputs.remove_namespace(name)
        return self._namespace_changed(name, old_labels)

    def _namespace_changed(self, name: str, old_labels: dict[str, str]) -> PolicyDelta:
        new_labels = self.inputs.namespace_labels(name)
        if old_labels == new_labels:
            return PolicyDelta()
        affected: set[ObjectRef] = set()
        for policy in self.inputs.policies.values():
            flips = any(
                peer.namespace_selector.matches(old_labels)
                != peer.namespace_selector.matches(new_labels)
                for rule in policy.rules
                for peer in rule.peers or ()
                if peer.namespace_selector is not None
            )
            if flips:
                affected |= self.inputs.subjects(policy)
        return self._recompute(affected)

    # --- pods ------------------------------------------------------------------------------------

    def update_pod(self, pod: PodInfo) -> PolicyDelta:
        old = self.inputs.pods.get(pod.ref)
        if old == pod:
            return PolicyDelta()
        referencing = self._policies_referencing(old) | self._policies_referencing(pod)
        self.inputs.set_pod(pod)
        return self._recompute(self._subjects_of(referencing) | {pod.ref})

    def delete_pod(self, ref: ObjectRef) -> PolicyDelta:
        old = self.inputs.pods.get(ref)
        if old is None:
            return PolicyDelta()
        referencing = self._policies_referencing(old)
        self.inputs.remove_pod(ref)
        return self._recompute(self._subjects_of(referencing) | {ref})

    def _policies_referencing(self, pod: PodInfo | None) -> set[ObjectRef]:
        """Policies whose peer sets could include `pod` (so its change may matter)."""
        if pod is None or pod.host_network or pod.identity is None:
            return set()
        ns_labels = self.inputs.namespace_labels(pod.namespace)
        peer_labels = pod.peer_labels
        found: set[ObjectRef] = set()
        for policy in self.inputs.policies.values():
            for rule in policy.rules:
                if rule.peers is None:
                    hit = rule.direction is Direction.EGRESS and rule.has_named_ports
                else:
                    hit = any(
                        peer.selects_pod(policy.ref.namespace, pod.namespace, peer_labels, ns_labels)
                        for peer in rule.peers
                    )
                if hit:
                    found.add(policy.ref)
                    break
        return found

    def _subjects_of(self, policies: Iterable[ObjectRef]) -> set[ObjectRef]:
        subjects: set[ObjectRef] = set()
        for ref in policies:
            policy = self.inputs.policies.get(ref)
            if policy is not None:
                subjects |= self.inputs.subjects(policy)
        return subjects

    # --- policies --------------------------------------------------------------------------------

    def update_policy(self, policy: CompiledPolicy | NetworkPolicy) -> PolicyDelta:
        compiled = as_policy(policy)
        old = self.inputs.policies.get(compiled.ref)
        if old == compiled:
            return PolicyDelta()
        self.inputs.set_policy(compiled)
        affected = self.inputs.subjects(compiled)
        if old is not None:
            affected |= self.inputs.subjects(old)
        return self._policy_changed(compiled.ref, compiled.prefixes(), affected)

    def delete_policy(self, ref: ObjectRef) -> PolicyDelta:
        old = self.inputs.remove_policy(ref)
        if old is None:
            return PolicyDelta()
        return self._policy_changed(ref, frozenset(), self.inputs.subjects(old))

    def _policy_changed(
        self, ref: ObjectRef, prefixes: frozenset[str], affected: set[ObjectRef]
    ) -> PolicyDelta:
        added, removed = self.cidrs.set_policy(ref, prefixes)
        changed = [*added, *removed]
        if changed:
            for other in self.inputs.policies.values():
                if self.cidrs.affected_by(changed, other.ip_blocks()):
                    affected |= self.inputs.subjects(other)
        delta = self._recompute(affected)
        delta.cidr_upserts.update(added)
        delta.cidr_removals.update(removed)
        return delta

    # --- recomputation -----------------------------------------------------------------------

    def resync(self) -> PolicyDelta:
        """Recompute every endpoint (periodic repair; also the first full computation)."""
        return self._recompute(set(self.inputs.pods) | set(self._endpoints))

    def _recompute(self, affected: Iterable[ObjectRef]) -> PolicyDelta:
        delta = PolicyDelta()
        cache: PeerCache = {}
        for ref in sorted(affected):
            pod = self.inputs.pods.get(ref)
            new = compute_endpoint(self.inputs, self.cidrs, pod, cache) if pod else None
            old = self._endpoints.get(ref)
            if new == old:
                continue
            if new is None:
                del self._endpoints[ref]
            else:
                self._endpoints[ref] = new
            change = diff_endpoint(old, new)
            if change:
                delta.endpoints[ref] = change
        return delta


def compute_policy(
    namespaces: Iterable[NamespaceInfo | Namespace],
    pods: Iterable[PodInfo],
    policies: Iterable[CompiledPolicy | NetworkPolicy],
    cidr_allocator: IdentityAllocator | None = None,
) -> DesiredPolicy:
    """The desired policy computed from scratch (reference for the incremental resolver)."""
    inputs = PolicyInputs()
    for ns in namespaces:
        inputs.set_namespace(_ns_info(ns))
    for pod in pods:
        inputs.set_pod(pod)
    cidrs = CidrTable(cidr_allocator)
    for policy in sorted((as_policy(p) for p in policies), key=lambda p: p.ref):
        inputs.set_policy(policy)
        cidrs.set_policy(policy.ref, policy.prefixes())
    cache: PeerCache = {}
    endpoints = {
        ref: endpoint
        for ref, pod in sorted(inputs.pods.items())
        if (endpoint := compute_endpoint(inputs, cidrs, pod, cache)) is not None
    }
    return DesiredPolicy(endpoints, cidrs.identities())
