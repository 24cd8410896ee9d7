"""Answers "who is this address / identity / rule?" for flow enrichment, from policy state.

Backed by the policy state's read-only query interface (agent/policy_queries.py), so flows
name pods, identities and policies exactly as the maps the datapath used were computed. The
address index is rebuilt only when the manager applied something since the last lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from membrane.identities import LabelSet
from membrane.k8s_models import ObjectRef
from membrane.policy import Direction

from .observing.enriching import EndpointInfo
from .policy_queries import PolicyQueries


class PolicyDirectory:
    def __init__(self, queries: PolicyQueries,
                 prefilter: Callable[[int], tuple[str, str] | None] = lambda _ref: None) -> None:
        self.queries = queries
        self.prefilter = prefilter  # counter slot -> (kind, name) of a prefilter rule or deny list
        self._seen = -1
        self._by_ip: dict[str, EndpointInfo] = {}

    def generation(self) -> int:
        return self.queries.generation

    def _index(self) -> dict[str, EndpointInfo]:
        generation = self.queries.generation
        if self._seen != generation:
            index = {}
            for pod in self.queries.peer_pods():
                info = EndpointInfo(pod.ref.namespace, pod.ref.name, dict(pod.labels), pod.identity or 0)
                for ip in pod.ips:
                    index[ip] = info
            self._by_ip, self._seen = index, generation
        return self._by_ip

    def lookup_ip(self, ip: str) -> EndpointInfo | None:
        return self._index().get(ip)

    def identity_labels(self, identity: int) -> Mapping[str, str] | Iterable[str] | None:
        labels: LabelSet | None = self.queries.identity_labels(identity)
        return labels.to_strings() if labels is not None else None

    def isolating_policies(self, ip: str, direction: str) -> list[str]:
        """Policies selecting the pod at `ip` for `direction` (why a default-deny drop happened)."""
        info = self.lookup_ip(ip)
        if info is None:
            return []
        wanted = Direction.INGRESS if direction == "ingress" else Direction.EGRESS
        return sorted(str(ref) for ref in self.queries.isolating(ObjectRef(info.namespace, info.pod), wanted))

    def describe_prefilter(self, rule_ref: int) -> list[str]:
        """A prefilter drop's rule or deny list, by its counter slot ([] when it is gone)."""
        owner = self.prefilter(rule_ref)
        return [f"prefilter/{owner[1]}"] if owner is not None else []

    def describe_rule(self, rule_ref: int) -> list[str]:
        if rule_ref == 0:
            return []
        try:
            return self.queries.rule_policies(rule_ref)
        except (KeyError, IndexError):
            return []
