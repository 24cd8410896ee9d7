"""What the policy engine reads: namespaces, pods with identities, compiled policies (pure).

`PodInfo`/`NamespaceInfo` are the few facts policy needs, detached from the Kubernetes models
so the resolver can be fed from the operator's state stream or from tests alike. `PolicyInputs`
holds the current set, indexed by namespace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from membrane.identities import filter_pod_labels
from membrane.k8s_models import NamedPort, Namespace, NetworkPolicy, ObjectRef, Pod
from membrane.labels import namespace_labels
from membrane.policy.entries import Protocol
from membrane.policy.rules import CompiledPolicy, compile_policy


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

    @property
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

    def set_pod(self, pod: PodInfo) -> PodInfo | None:
        old = self.pods.get(pod.ref)
        self.pods[pod.ref] = pod
        self._pods_by_ns.setdefault(pod.namespace, {})[pod.ref] = pod
        return old

    def remove_pod(self, ref: ObjectRef) -> PodInfo | None:
        old = self.pods.pop(ref, None)
        if old is not None:
            bucket = self._pods_by_ns[ref.namespace]
            del bucket[ref]
            if not bucket:
                del self._pods_by_ns[ref.namespace]
        return old

    def set_policy(self, policy: CompiledPolicy) -> CompiledPolicy | None:
        old = self.policies.get(policy.ref)
        self.policies[policy.ref] = policy
        self._policies_by_ns.setdefault(policy.ref.namespace, {})[policy.ref] = policy
        return old

    def remove_policy(self, ref: ObjectRef) -> CompiledPolicy | None:
        old = self.policies.pop(ref, None)
        if old is not None:
            bucket = self._policies_by_ns[ref.namespace]
            del bucket[ref]
            if not bucket:
                del self._policies_by_ns[ref.namespace]
        return old

    def subjects(self, policy: CompiledPolicy) -> set[ObjectRef]:
        """Enforced pods the policy applies to (its namespace, its podSelector)."""
        return {
            ref
            for ref, pod in self.pods_in(policy.ref.namespace).items()
            if not pod.host_network and policy.subject.matches(pod.labels)
        }
