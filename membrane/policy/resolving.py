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

Scale (Cilium's SelectorCache and Felix's dirty sets): pods are indexed by namespace and
labels, policies by the peers they use, so an update finds the policies and subjects it touches
without scanning every pod or policy; pods with the same namespace, labels and named ports share
one computed result within a recomputation. Two options for an agent:

- `interest`: the pods whose endpoint policy is wanted (an agent's local endpoints); every pod
  stays a peer, but only these get their entries computed. None (the default): every pod.
- `deferred`: updates only record which endpoints became dirty (`pending`); `flush()` computes
  them once per batch (reads flush first). `changed` accumulates the endpoints whose result
  changed until `take_changed()`.

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
    EndpointDelta,
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
    def __init__(self, cidr_allocator: IdentityAllocator | None = None, *, deferred: bool = False,
                 interest: Iterable[ObjectRef] | None = None) -> None:
        self.inputs = PolicyInputs()
        self.cidrs = CidrTable(cidr_allocator)
        self._endpoints: dict[ObjectRef, EndpointPolicy] = {}
        self.deferred = deferred
        self.interest: set[ObjectRef] | None = None if interest is None else set(interest)
        self.pending: set[ObjectRef] = set()
        self.changed: set[ObjectRef] = set()
        # interest mode: the policies selecting each interesting pod (dropped when the pod or
        # a policy of its namespace changes).
        self._selecting: dict[ObjectRef, frozenset[ObjectRef]] = {}

    # --- reading ---------------------------------------------------------------------------

    def desired(self) -> DesiredPolicy:
        self._settle()
        return DesiredPolicy(dict(sorted(self._endpoints.items())), self.cidrs.identities())

    def endpoint(self, ref: ObjectRef) -> EndpointPolicy | None:
        self._settle()
        return self._endpoints.get(ref)

    def compute(self, ref: ObjectRef) -> EndpointPolicy | None:
        """A pod's endpoint policy even when it is not of interest (trace, listings)."""
        self._settle()
        if self.interest is None or ref in self.interest:
            return self._endpoints.get(ref)
        pod = self.inputs.pods.get(ref)
        return compute_endpoint(self.inputs, self.cidrs, pod) if pod is not None else None

    def desired_for(self, refs: Iterable[ObjectRef]) -> DesiredPolicy:
        """Like `desired()`, holding just these pods (computed on demand when not of interest)."""
        endpoints = {ref: ep for ref in sorted(set(refs)) if (ep := self.compute(ref)) is not None}
        return DesiredPolicy(endpoints, self.cidrs.identities())

    def selecting(self, policy_ref: ObjectRef) -> dict[Direction, list[ObjectRef]]:
        """The pods a policy isolates, per direction (whatever the interest)."""
        policy = self.inputs.policies.get(policy_ref)
        if policy is None:
            return {}
        subjects = sorted(self.inputs.subjects(policy))
        return {d: list(subjects) for d in sorted(policy.directions)}

    # --- interest and batching ------------------------------------------------------------

    def set_interest(self, ref: ObjectRef, interested: bool) -> PolicyDelta:
        """Add or drop one pod of interest (no-op without an interest set)."""
        if self.interest is None or (ref in self.interest) == interested:
            return PolicyDelta()
        if interested:
            self.interest.add(ref)
        else:
            self.interest.discard(ref)
        self._selecting.pop(ref, None)
        return self._recompute({ref})

    def flush(self) -> PolicyDelta:
        """Compute the pending endpoints (deferred mode)."""
        pending, self.pending = self.pending, set()
        delta = self._compute(pending)
        if self.deferred:
            self.changed.update(delta.endpoints)
        return delta

    def take_changed(self) -> set[ObjectRef]:
        self._settle()
        changed, self.changed = self.changed, set()
        return changed

    def _settle(self) -> None:
        if self.pending:
            self.flush()

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
                affected |= self._subjects(policy)
        return self._recompute(affected)

    # --- pods ------------------------------------------------------------------------------------

    def update_pod(self, pod: PodInfo) -> PolicyDelta:
        old = self.inputs.pods.get(pod.ref)
        if old == pod:
            return PolicyDelta()
        referencing = self._policies_referencing(old) | self._policies_referencing(pod)
        self.inputs.set_pod(pod)
        self._selecting.pop(pod.ref, None)
        return self._recompute(self._subjects_of(referencing) | {pod.ref})

    def delete_pod(self, ref: ObjectRef) -> PolicyDelta:
        old = self.inputs.pods.get(ref)
        if old is None:
            return PolicyDelta()
        referencing = self._policies_referencing(old)
        self.inputs.remove_pod(ref)
        self._selecting.pop(ref, None)
        return self._recompute(self._subjects_of(referencing) | {ref})

    def _policies_referencing(self, pod: PodInfo | None) -> set[ObjectRef]:
        """Policies whose peer sets could include `pod` (so its change may matter)."""
        if pod is None or pod.host_network or pod.identity is None:
            return set()
        return self.inputs.policies_maybe_selecting(pod, self.inputs.namespace_labels(pod.namespace))

    def _subjects(self, policy: CompiledPolicy) -> set[ObjectRef]:
        """A policy's subjects that matter: all of them, or those of interest."""
        if self.interest is None:
            return self.inputs.subjects(policy)
        found = set()
        for ref in self.interest:
            if ref.namespace != policy.ref.namespace:
                continue
            pod = self.inputs.pods.get(ref)
            if pod is not None and not pod.host_network and policy.subject.matches(pod.labels):
                found.add(ref)
        return found

    def _selecting_of(self, ref: ObjectRef) -> frozenset[ObjectRef]:
        found = self._selecting.get(ref)
        if found is None:
            pod = self.inputs.pods.get(ref)
            found = frozenset(
                policy.ref
                for policy in self.inputs.policies_in(ref.namespace).values()
                if pod is not None and not pod.host_network and policy.subject.matches(pod.labels)
            )
            self._selecting[ref] = found
        return found

    def _subjects_of(self, policies: Iterable[ObjectRef]) -> set[ObjectRef]:
        refs = policies if isinstance(policies, (set, frozenset)) else set(policies)
        if not refs:
            return set()
        if self.interest is not None:
            return {ref for ref in self.interest if not self._selecting_of(ref).isdisjoint(refs)}
        subjects: set[ObjectRef] = set()
        for ref in refs:
            policy = self.inputs.policies.get(ref)
            if policy is not None:
                subjects |= self.inputs.subjects(policy)
        return subjects

    def _forget_selecting(self, namespace: str) -> None:
        for ref in [r for r in self._selecting if r.namespace == namespace]:
            del self._selecting[ref]

    # --- policies --------------------------------------------------------------------------------

    def update_policy(self, policy: CompiledPolicy | NetworkPolicy) -> PolicyDelta:
        compiled = as_policy(policy)
        old = self.inputs.policies.get(compiled.ref)
        if old == compiled:
            return PolicyDelta()
        self.inputs.set_policy(compiled)
        self._forget_selecting(compiled.ref.namespace)
        affected = self._subjects(compiled)
        if old is not None:
            affected |= self._subjects(old)
        return self._policy_changed(compiled.ref, compiled.prefixes(), affected)

    def delete_policy(self, ref: ObjectRef) -> PolicyDelta:
        old = self.inputs.remove_policy(ref)
        if old is None:
            return PolicyDelta()
        self._forget_selecting(ref.namespace)
        return self._policy_changed(ref, frozenset(), self._subjects(old))

    def _policy_changed(
        self, ref: ObjectRef, prefixes: frozenset[str], affected: set[ObjectRef]
    ) -> PolicyDelta:
        added, removed = self.cidrs.set_policy(ref, prefixes)
        changed = [*added, *removed]
        if changed:
            for other in self.inputs.policies.values():
                if other.ref == ref:  # its own subjects are in `affected` already
                    continue
                blocks = other.ip_blocks()
                if blocks and self.cidrs.affected_by(changed, blocks):
                    affected |= self._subjects(other)
        delta = self._recompute(affected)
        delta.cidr_upserts.update(added)
        delta.cidr_removals.update(removed)
        return delta

    # --- recomputation -----------------------------------------------------------------------

    def resync(self) -> PolicyDelta:
        """Recompute every endpoint (periodic repair; also the first full computation)."""
        return self._recompute(set(self.inputs.pods) | set(self._endpoints))

    def _recompute(self, affected: Iterable[ObjectRef]) -> PolicyDelta:
        if self.interest is not None:
            interest, known = self.interest, self._endpoints
            affected = [ref for ref in affected if ref in interest or ref in known]
        if self.deferred:
            self.pending.update(affected)
            return PolicyDelta()
        return self._compute(affected)

    def _compute(self, affected: Iterable[ObjectRef]) -> PolicyDelta:
        delta = PolicyDelta()
        cache: PeerCache = {}
        # An endpoint's result depends on the pod only through these: share it.
        shared: dict[tuple[object, ...], EndpointPolicy | None] = {}
        diffs: dict[tuple[int, int], EndpointDelta] = {}
        interest = self.interest
        for ref in sorted(affected):
            pod = self.inputs.pods.get(ref)
            if pod is None or (interest is not None and ref not in interest):
                new = None
            else:
                key = _sharing_key(pod)
                if key in shared:
                    new = shared[key]
                else:
                    new = shared[key] = compute_endpoint(self.inputs, self.cidrs, pod, cache)
            old = self._endpoints.get(ref)
            if new == old:
                continue
            if new is None:
                del self._endpoints[ref]
            else:
                self._endpoints[ref] = new
            pair = (id(old), id(new))  # shared results give shared diffs
            change = diffs.get(pair)
            if change is None:
                change = diffs[pair] = diff_endpoint(old, new)
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
    shared: dict[tuple[object, ...], EndpointPolicy | None] = {}
    endpoints = {}
    for ref, pod in sorted(inputs.pods.items()):
        key = _sharing_key(pod)
        if key not in shared:
            shared[key] = compute_endpoint(inputs, cidrs, pod, cache)
        if (endpoint := shared[key]) is not None:
            endpoints[ref] = endpoint
    return DesiredPolicy(endpoints, cidrs.identities())


def _sharing_key(pod: PodInfo) -> tuple[object, ...]:
    """What an endpoint's result depends on, of the pod itself: pods alike share a result."""
    return (pod.namespace, tuple(sorted(pod.labels.items())), pod.named_ports, pod.host_network)
