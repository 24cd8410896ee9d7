"""Computing one endpoint's desired policy from the current inputs (pure).

Per endpoint (a pod that is not host-network):

- every policy of its namespace whose podSelector matches it selects it for each direction in
  that policy's policyTypes, whatever the rules and protocols: it is then isolated in that
  direction (default deny); pods no policy selects stay open in that direction;
- each rule adds allow entries (rules and policies add up as a union): one per peer identity
  and port range; a rule without peers uses the wildcard identity 0, without ports the
  wildcard protocol;
- peer selectors see the identity-relevant labels (the datapath only knows identities, so a
  selector on e.g. pod-template-hash matches nothing, as in Cilium); ipBlocks select CIDR
  identities (see `cidrs`);
- named ports resolve on the destination: for ingress the endpoint itself; for egress each
  peer pod separately (entry = that pod's identity and its port number). A named port in an
  egress rule without peers resolves on every pod; ipBlock destinations have no named ports.
  Pods sharing an identity but numbering a named port differently all get each number: the
  identity cannot tell them apart.

Egress entries live on the source endpoint and are judged there; ingress entries on the
destination endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from membrane.identities import IDENTITY_ANY
from membrane.k8s_models import ObjectRef
from membrane.policy.cidrs import CidrTable
from membrane.policy.entries import (
    Direction,
    EndpointPolicy,
    PolicyKey,
    PolicyValue,
    Protocol,
    RuleRef,
    Verdict,
)
from membrane.policy.inputs import PodInfo, PolicyInputs, peer_key
from membrane.policy.rules import CompiledPeer, CompiledPolicy, CompiledRule


@dataclass(frozen=True)
class PeerSet:
    """Who a rule's peers are: everyone, or these pods plus these CIDR identities."""

    everyone: bool
    pods: tuple[PodInfo, ...] = ()
    cidr_identities: frozenset[int] = frozenset()

    def identities(self) -> frozenset[int]:
        return self._identities

    @cached_property
    def _identities(self) -> frozenset[int]:
        if self.everyone:
            return frozenset({IDENTITY_ANY})
        return frozenset(p.identity for p in self.pods if p.identity is not None) | (
            self.cidr_identities
        )


def _peer_candidates(inputs: PolicyInputs) -> Iterable[PodInfo]:
    return (p for p in inputs.pods.values() if not p.host_network and p.identity is not None)


def select_peers(
    inputs: PolicyInputs,
    cidrs: CidrTable,
    policy: CompiledPolicy,
    rule: CompiledRule,
    cache: dict[Any, Any] | None = None,
) -> PeerSet:
    """`cache` (optional, one computation's lifetime) shares peers among rules that use the
    same selectors."""
    if rule.peers is None:
        return PeerSet(everyone=True)
    pods: dict[ObjectRef, PodInfo] = {}
    cidr_ids: set[int] = set()
    for peer in rule.peers:
        if peer.ip_block is not None:
            cidr_ids |= cidrs.select(peer.ip_block)
            continue
        if cache is not None:
            slot = ("peer", peer_key(policy.ref.namespace, peer))
            found = cache.get(slot)
            if found is None:
                found = cache[slot] = _select_pods(inputs, policy, peer)
            for pod in found:
                pods.setdefault(pod.ref, pod)
        else:
            for pod in _select_pods(inputs, policy, peer):
                pods.setdefault(pod.ref, pod)
    return PeerSet(False, tuple(sorted(pods.values(), key=lambda p: p.ref)), frozenset(cidr_ids))


def _select_pods(inputs: PolicyInputs, policy: CompiledPolicy, peer: CompiledPeer) -> list[PodInfo]:
    """Pods one (non-ipBlock) peer selects."""
    found: list[PodInfo] = []
    # podSelector alone stays in the policy's namespace; a namespaceSelector picks
    # namespaces first; the label index narrows each namespace's pods.
    if peer.namespace_selector is None:
        namespaces: Iterable[str] = (policy.ref.namespace,)
    else:
        selector = peer.namespace_selector
        namespaces = [
            ns for ns in inputs.pod_namespaces() if selector.matches(inputs.namespace_labels(ns))
        ]
    pod_selector = peer.pod_selector
    for namespace in namespaces:
        for pod in inputs.candidates(namespace, pod_selector):
            if pod.host_network or pod.identity is None:
                continue
            if pod_selector is None or pod_selector.matches(pod.peer_labels):
                found.append(pod)
    return found


# Rule slot (policy, direction, index) -> its peers; ("peer", PeerKey) -> one peer's pods.
PeerCache = dict[Any, Any]


def _add(
    entries: dict[PolicyKey, PolicyValue], key: PolicyKey, value: PolicyValue
) -> None:
    old = entries.get(key)
    entries[key] = value if old is None else old.merged(value)


def _rule_entries(
    inputs: PolicyInputs,
    pod: PodInfo,
    peers: PeerSet,
    rule: CompiledRule,
    ref: RuleRef,
    entries: dict[PolicyKey, PolicyValue],
) -> None:
    value = PolicyValue(Verdict.ALLOW, frozenset({ref}))
    direction = rule.direction
    if rule.ports is None:
        for identity in peers.identities():
            _add(entries, PolicyKey(direction, identity, Protocol.ANY), value)
        return
    for port in rule.ports:
        if port.name is None:
            for identity in peers.identities():
                key = PolicyKey(direction, identity, port.protocol, port.start, port.end)
                _add(entries, key, value)
        elif direction is Direction.INGRESS:
            # Destination is this endpoint: resolve on its own containers.
            for number in pod.resolve_port(port.name, port.protocol):
                for identity in peers.identities():
                    _add(entries, PolicyKey(direction, identity, port.protocol, number, number), value)
        else:
            # Destination is each peer pod: resolve per pod, key by that pod's identity.
            targets = _peer_candidates(inputs) if peers.everyone else peers.pods
            for target in targets:
                assert target.identity is not None
                for number in target.resolve_port(port.name, port.protocol):
                    key = PolicyKey(direction, target.identity, port.protocol, number, number)
                    _add(entries, key, value)


def compute_endpoint(
    inputs: PolicyInputs, cidrs: CidrTable, pod: PodInfo, cache: PeerCache | None = None
) -> EndpointPolicy | None:
    """Desired policy of one pod; None when the pod is not enforced (host network)."""
    if pod.host_network:
        return None
    cache = {} if cache is None else cache
    entries: dict[PolicyKey, PolicyValue] = {}
    selected_by: dict[Direction, set[ObjectRef]] = {}
    for policy in sorted(inputs.policies_in(pod.namespace).values(), key=lambda p: p.ref):
        if not policy.subject.matches(pod.labels):
            continue
        for direction in policy.directions:
            selected_by.setdefault(direction, set()).add(policy.ref)
        for rule in policy.rules:
            slot = (policy.ref, rule.direction, rule.index)
            peers = cache.get(slot)
            if peers is None:
                peers = cache[slot] = select_peers(inputs, cidrs, policy, rule, cache)
            ref = RuleRef(policy.ref, rule.direction, rule.index)
            _rule_entries(inputs, pod, peers, rule, ref, entries)
    return EndpointPolicy(
        entries=dict(sorted(entries.items())),
        selected_by={d: frozenset(refs) for d, refs in sorted(selected_by.items())},
    )
