"""Answers "who is this address / identity / rule?" for flow enrichment, from policy state.

Backed by the policy manager's inputs, so flows name pods, identities and policies exactly as
the maps the datapath used were computed. The address index is rebuilt only when the manager
applied something since the last lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from membrane.identities import LabelSet
from membrane.k8s_models import ObjectRef
from membrane.policy import Direction

from .observing.enriching import EndpointInfo
from .policy_syncing import PolicyManager


class PolicyDirectory:
    def __init__(self, manager: PolicyManager) -> None:
        self.manager = manager
        self._seen = -1
        self._by_ip: dict[str, EndpointInfo] = {}

    def generation(self) -> int:
        return self.manager.generation

    def _index(self) -> dict[str, EndpointInfo]:
        if self._seen != self.manager.generation:
            with self.manager.lock:
                index = {}
                for pod in self.manager.resolver.inputs.pods.values():
                    info = EndpointInfo(pod.ref.namespace, pod.ref.name, dict(pod.labels), pod.identity or 0)
                    for ip in pod.ips:
                        index[ip] = info
                self._by_ip, self._seen = index, self.manager.generation
        return self._by_ip

    def lookup_ip(self, ip: str) -> EndpointInfo | None:
        return self._index().get(ip)

    def identity_labels(self, identity: int) -> Mapping[str, str] | Iterable[str] | None:
        labels: LabelSet | None = self.manager.identities.allocator.labels_of(identity)
        return labels.to_strings() if labels is not None else None

    def isolating_policies(self, ip: str, direction: str) -> list[str]:
        """Policies selecting the pod at `ip` for `direction` (why a default-deny drop happened)."""
        info = self.lookup_ip(ip)
        if info is None:
            return []
        with self.manager.lock:
            policy = self.manager.resolver.endpoint(ObjectRef(info.namespace, info.pod))
            if policy is None:
                return []
            wanted = Direction.INGRESS if direction == "ingress" else Direction.EGRESS
            return sorted(str(ref) for ref in policy.selected_by.get(wanted, ()))

    def describe_rule(self, rule_ref: int) -> list[str]:
        if rule_ref == 0:
            return []
        try:
            return sorted(str(ref) for ref in self.manager.rules.policies(rule_ref))
        except (KeyError, IndexError):
            return []
