"""What the policy engine reads: namespaces, pods with identities, compiled policies (pure).

`PodInfo`/`NamespaceInfo` are the few facts policy needs, detached from the Kubernetes models
so the resolver can be fed from the operator's state stream or from tests alike. `PolicyInputs`
holds the current set, indexed by namespace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

from membrane.identities import filter_pod_labels
from membrane.k8s_models import NamedPort, Namespace, NetworkPolicy, ObjectRef, Pod
from membrane.labels import namespace_labels
from membrane.policy.entries import Direction, Protocol
from membrane.policy.rules import CompiledPeer, CompiledPolicy, compile_policy
from membrane.selectors import Operator, Requirement, Selector

# Keys of the peer index (see `PolicyInputs.policies_maybe_selecting`).
IndexKey = tuple[str, ...]
# A distinct peer: (the policy's namespace, or None when a namespaceSelector is given,
# namespaceSelector, podSelector). Policies sharing a peer share its matching work.
PeerKey = tuple[str | None, Selector | None, Selector | None]


def _in_requirement(selector: Selector | None) -> Requirement | None:
    """The `In` requirement with the fewest values: what an index can look up."""
    if selector is None:
        return None
    best = None
    for req in selector.requirements:
        if req.operator is Operator.IN and (best is None or len(req.values) < len(best.values)):
            best = req
    return best


def peer_key(policy_namespace: str, peer: CompiledPeer) -> PeerKey:
    return (policy_namespace if peer.namespace_selector is None else None,
            peer.namespace_selector, peer.pod_selector)


def peer_index_keys(key: PeerKey) -> list[IndexKey]:
    """Where a peer is filed: every pod it can select yields at least one of these keys."""
    namespace, ns_sel, pod_sel = key
    pod_req = _in_requirement(pod_sel)
    if namespace is not None:
        if pod_req is None:
            return [("ns", namespace)]
        return [("ns", namespace, pod_req.key, v) for v in pod_req.values]
    ns_req = _in_requirement(ns_sel)
    if ns_req is not None and pod_req is not None:
        return [("nsl+pod", ns_req.key, nv, pod_req.key, pv) for nv in ns_req.values for pv in pod_req.values]
    if ns_req is not None:
        return [("nsl", ns_req.key, v) for v in ns_req.values]
    if pod_req is not None:
        return [("pod", pod_req.key, v) for v in pod_req.values]
    return [("any",)]


def pod_index_keys(pod: PodInfo, ns_labels: Mapping[str, str]) -> Iterable[IndexKey]:
    """Index keys under which every peer that can select `pod` is filed."""
    ns = pod.namespace
    yield ("any",)
    yield ("ns", ns)
    for k, v in pod.labels.items():
        yield ("ns", ns, k, v)
        yield ("pod", k, v)
    for nk, nv in ns_labels.items():
        yield ("nsl", nk, nv)
        for k, v in pod.labels.items():
            yield ("nsl+pod", nk, nv, k, v)


@dataclass(frozen=True)
class PodInfo:
    """A pod as policy sees it. `identity` None: not yet allocated (not a peer yet)."""

    ref: ObjectRef
    labels: Mapping[str, str] = field(default_factory=dict)
    identity: int | None = None
    ips: tuple[str, ...] = ()
    named_ports: tuple[NamedPort, ...] = ()
    # NetworkPolicy does not apply to host-network pods: they are neither subjects nor peers
    # (their traffic carries the host's identity).
    host_network: bool = False

    @classmethod
    def from_pod(cls, pod: Pod, identity: int | None) -> PodInfo:
        return cls(
            ref=pod.ref,
            labels=dict(pod.metadata.labels),
            identity=identity,
            ips=pod.ips,
            named_ports=pod.named_ports(),
            host_network=pod.spec.host_network,
        )

    @property
    def namespace(self) -> str:
        return self.ref.namespace

    @cached_property
    def peer_labels(self) -> dict[str, str]:
        """Labels peer selectors see: the identity-relevant ones (what the datapath knows)."""
        return filter_pod_labels(self.labels)

    def resolve_port(self, name: str, protocol: Protocol) -> tuple[int, ...]:
        """Numbers of the container ports called `name` with `protocol` (usually 0 or 1)."""
        return tuple(
            sorted({p.port for p in self.named_ports if p.name == name and p.protocol == protocol.name})
        )


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, labels: Mapping[str, str] | None = None) -> NamespaceInfo:
        return cls(name, namespace_labels(name, labels or {}))

    @classmethod
    def from_namespace(cls, namespace: Namespace) -> NamespaceInfo:
        return cls.of(namespace.metadata.name, namespace.metadata.labels)


def as_policy(policy: CompiledPolicy | NetworkPolicy) -> CompiledPolicy:
    return policy if isinstance(policy, CompiledPolicy) else compile_policy(policy)


class PolicyInputs:
    """Current namespaces, pods and policies with per-namespace indexes."""

    def __init__(self) -> None:
        self.namespaces: dict[str, NamespaceInfo] = {}
        self.pods: dict[ObjectRef, PodInfo] = {}
        self.policies: dict[ObjectRef, CompiledPolicy] = {}
        self._pods_by_ns: dict[str, dict[ObjectRef, PodInfo]] = {}
        self._policies_by_ns: dict[str, dict[ObjectRef, CompiledPolicy]] = {}
        # (namespace, label key, value) -> pods: selectors with an `In` requirement look up
        # their candidates instead of scanning (a superset: the selector still decides).
        self._pods_by_label: dict[tuple[str, str, str], set[ObjectRef]] = {}
        # Peer index: index key -> distinct peers -> policies using them (for "which
        # policies can select this pod as a peer", without scanning every policy).
        self._peers_by_key: dict[IndexKey, set[PeerKey]] = {}
        self._policies_by_peer: dict[PeerKey, set[ObjectRef]] = {}
        # Policies with an egress named-port rule to everyone: every pod's ports count.
        self._everyone_named_egress: set[ObjectRef] = set()

    def namespace_labels(self, name: str) -> dict[str, str]:
        """Labels of a namespace; a namespace we have not seen still has its name label."""
        ns = self.namespaces.get(name)
        return dict(ns.labels) if ns else namespace_labels(name, {})

    def pods_in(self, namespace: str) -> Mapping[ObjectRef, PodInfo]:
        return self._pods_by_ns.get(namespace, {})

    def policies_in(self, namespace: str) -> Mapping[ObjectRef, CompiledPolicy]:
        return self._policies_by_ns.get(namespace, {})

    def set_namespace(self, ns: NamespaceInfo) -> NamespaceInfo | None:
        old = self.namespaces.get(ns.name)
        self.namespaces[ns.name] = ns
        return old

    def remove_namespace(self, name: str) -> NamespaceInfo | None:
        return self.namespaces.pop(name, None)

    def pod_namespaces(self) -> Iterable[str]:
        """Namespaces that hold pods (seen as objects or not)."""
        return self._pods_by_ns.keys()

    def set_pod(self, pod: PodInfo) -> PodInfo | None:
        old = self.pods.get(pod.ref)
        if old is not None:
            self._unindex_pod(old)
        self.pods[pod.ref] = pod
        self._pods_by_ns.setdefault(pod.namespace, {})[pod.ref] = pod
        for k, v in pod.labels.items():
            self._pods_by_label.setdefault((pod.namespace, k, v), set()).add(pod.ref)
        return old

    def remove_pod(self, ref: ObjectRef) -> PodInfo | None:
        old = self.pods.pop(ref, None)
        if old is not None:
            self._unindex_pod(old)
            bucket = self._pods_by_ns[ref.namespace]
            del bucket[ref]
            if not bucket:
                del self._pods_by_ns[ref.namespace]
        return old

    def _unindex_pod(self, pod: PodInfo) -> None:
        for k, v in pod.labels.items():
            key = (pod.namespace, k, v)
            refs = self._pods_by_label.get(key)
            if refs is not None:
                refs.discard(pod.ref)
                if not refs:
                    del self._pods_by_label[key]

    def candidates(self, namespace: str, selector: Selector | None) -> Iterable[PodInfo]:
        """Pods of `namespace` that may match `selector` (None: all): a superset, by index."""
        pods = self.pods_in(namespace)
        if selector is not None and selector.matches_nothing:
            return ()
        req = _in_requirement(selector)
        if req is None:
            return pods.values()
        refs: set[ObjectRef] = set()
        for value in req.values:
            refs |= self._pods_by_label.get((namespace, req.key, value), set())
        return [pods[ref] for ref in refs]

    def set_policy(self, policy: CompiledPolicy) -> CompiledPolicy | None:
        old = self.policies.get(policy.ref)
        if old is not None:
            self._unindex_policy(old)
        self.policies[policy.ref] = policy
        self._policies_by_ns.setdefault(policy.ref.namespace, {})[policy.ref] = policy
        self._index_policy(policy)
        return old

    def remove_policy(self, ref: ObjectRef) -> CompiledPolicy | None:
        old = self.policies.pop(ref, None)
        if old is not None:
            self._unindex_policy(old)
            bucket = self._policies_by_ns[ref.namespace]
            del bucket[ref]
            if not bucket:
                del self._policies_by_ns[ref.namespace]
        return old

    @staticmethod
    def _peer_keys(policy: CompiledPolicy) -> set[PeerKey]:
        return {peer_key(policy.ref.namespace, peer) for rule in policy.rules for peer in rule.peers or ()
                if peer.ip_block is None}

    def _index_policy(self, policy: CompiledPolicy) -> None:
        for key in self._peer_keys(policy):
            users = self._policies_by_peer.setdefault(key, set())
            if not users:
                for index_key in peer_index_keys(key):
                    self._peers_by_key.setdefault(index_key, set()).add(key)
            users.add(policy.ref)
        if any(r.peers is None and r.direction is Direction.EGRESS and r.has_named_ports for r in policy.rules):
            self._everyone_named_egress.add(policy.ref)

    def _unindex_policy(self, policy: CompiledPolicy) -> None:
        for key in self._peer_keys(policy):
            users = self._policies_by_peer.get(key)
            if users is None:
                continue
            users.discard(policy.ref)
            if not users:
                del self._policies_by_peer[key]
                for index_key in peer_index_keys(key):
                    peers = self._peers_by_key.get(index_key)
                    if peers is not None:
                        peers.discard(key)
                        if not peers:
                            del self._peers_by_key[index_key]
        self._everyone_named_egress.discard(policy.ref)

    def policies_maybe_selecting(self, pod: PodInfo, ns_labels: Mapping[str, str]) -> set[ObjectRef]:
        """Policies with a peer that selects `pod` (exact per distinct peer), plus those with
        an egress named-port rule to everyone. The caller decides whether the pod counts as
        a peer at all (identity, host network)."""
        found = set(self._everyone_named_egress)
        seen: set[PeerKey] = set()
        peer_labels = pod.peer_labels
        for index_key in pod_index_keys(pod, ns_labels):
            for key in self._peers_by_key.get(index_key, ()):
                if key in seen:
                    continue
                seen.add(key)
                namespace, ns_sel, pod_sel = key
                if namespace is not None:
                    if namespace != pod.namespace:
                        continue
                elif ns_sel is None or not ns_sel.matches(ns_labels):
                    continue
                if pod_sel is None or pod_sel.matches(peer_labels):
                    found |= self._policies_by_peer[key]
        return found

    def subjects(self, policy: CompiledPolicy) -> set[ObjectRef]:
        """Enforced pods the policy applies to (its namespace, its podSelector)."""
        return {
            pod.ref
            for pod in self.candidates(policy.ref.namespace, policy.subject)
            if not pod.host_network and policy.subject.matches(pod.labels)
        }
