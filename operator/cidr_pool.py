"""PodCIDR arithmetic: one range per node carved from the cluster pool (pure).

The assignments themselves live in the Kubernetes API (the node's `spec.podCIDR`, else our
annotation on the Node), so this module keeps no state: `plan` looks at every node's recorded
range and says which nodes still need one and which range each gets. A node that already has a
range keeps it forever (restarts and failovers re-read it, they never recompute it); a deleted
node's range is free again simply because no node records it any more.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any


class PoolExhausted(Exception):
    pass


@dataclass(frozen=True)
class NodeCidrFacts:
    """What the API says about one node's range."""

    name: str
    spec_pod_cidr: str | None = None  # set by kube-controller-manager or the admin: wins
    annotation: str | None = None  # ours, written by an earlier leader
    created: str = ""  # creationTimestamp: older nodes keep a contested range


@dataclass(frozen=True)
class CidrPlan:
    effective: dict[str, IPv4Network]  # every node's range after the plan
    to_write: dict[str, IPv4Network]  # nodes whose annotation must be (re)written
    conflicts: list[str]  # human-readable notes about ranges that could not be kept


def _parse(text: str | None) -> IPv4Network | None:
    if not text:
        return None
    try:
        network = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        return None
    return network if isinstance(network, IPv4Network) else None


class CidrPool:
    """The cluster pool split into equal node ranges, handed out lowest first."""

    def __init__(self, cluster_cidr: str, node_prefix: int = 24) -> None:
        self.cidr = IPv4Network(cluster_cidr, strict=True)
        if not self.cidr.prefixlen <= node_prefix <= 30:
            raise ValueError(f"node prefix /{node_prefix} does not fit in {self.cidr}")
        self.node_prefix = node_prefix

    @property
    def size(self) -> int:
        return 1 << (self.node_prefix - self.cidr.prefixlen)

    def _first_free(self, taken: _Taken, start: int) -> IPv4Network:
        """The lowest free node range at index `start` or above (ranges only get taken while a
        plan runs, so the next search may start where the last one ended)."""
        size = 1 << (32 - self.node_prefix)
        base = int(self.cidr.network_address)
        for index in range(start, self.size):
            candidate = IPv4Network((base + index * size, self.node_prefix))
            if not taken.overlaps(candidate):
                return candidate
        raise PoolExhausted(f"no free /{self.node_prefix} left in {self.cidr}")

    def plan(self, nodes: Sequence[NodeCidrFacts]) -> CidrPlan:
        """Keep every recorded range that does not collide with an older node's; give the rest
        (new nodes, unparsable annotations, collisions) the lowest free range."""
        ordered = sorted(nodes, key=lambda n: (n.created, n.name))
        effective: dict[str, IPv4Network] = {}
        taken = _Taken()
        needing: list[NodeCidrFacts] = []
        conflicts: list[str] = []
        # spec.podCIDR first: it is authoritative whatever we recorded.
        for node in ordered:
            spec = _parse(node.spec_pod_cidr)
            if spec is not None:
                effective[node.name] = spec
                taken.add(spec, node.name)
        for node in ordered:
            if node.name in effective:
                continue
            recorded = _parse(node.annotation)
            if recorded is None:
                if node.annotation:
                    conflicts.append(f"{node.name}: unparsable range {node.annotation!r}")
                needing.append(node)
                continue
            clash = taken.overlaps(recorded)
            if clash is not None:
                conflicts.append(f"{node.name}: {recorded} overlaps {clash}'s range")
                needing.append(node)
                continue
            effective[node.name] = recorded
            taken.add(recorded, node.name)
        to_write: dict[str, IPv4Network] = {}
        cursor = 0
        size = 1 << (32 - self.node_prefix)
        for node in needing:
            cidr = self._first_free(taken, cursor)
            cursor = (int(cidr.network_address) - int(self.cidr.network_address)) // size + 1
            effective[node.name] = cidr
            taken.add(cidr, node.name)
            to_write[node.name] = cidr
        return CidrPlan(effective, to_write, conflicts)


class _Taken:
    """Ranges in use, for overlap checks in O(log n): two CIDR blocks overlap only when one
    contains the other, so look for a containing block by prefix (at most 33 lookups) and for
    a contained one by its start address (bisect)."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[int, int], str] = {}  # (network, prefix) -> owner
        self._starts: list[tuple[int, int]] = []  # sorted (network, prefix)

    def add(self, net: IPv4Network, owner: str = "") -> None:
        key = (int(net.network_address), net.prefixlen)
        if key not in self._blocks:
            bisect.insort(self._starts, key)
        self._blocks.setdefault(key, owner or str(net))

    def overlaps(self, net: IPv4Network) -> str | None:
        """The owner of a taken range overlapping `net`, or None."""
        start, prefix = int(net.network_address), net.prefixlen
        for length in range(prefix, -1, -1):  # `net` itself or a block containing it
            mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
            owner = self._blocks.get((start & mask, length))
            if owner is not None:
                return owner
        end = start + (1 << (32 - prefix))
        index = bisect.bisect_left(self._starts, (start, 0))
        if index < len(self._starts) and self._starts[index][0] < end:  # a block inside `net`
            return self._blocks[self._starts[index]]
        return None


# --- reading a Node (pure; the syncer writes, the state builder reads) -----------------------
JSON = dict[str, Any]
POD_CIDR_ANNOTATION = "membrane.io/pod-cidr"


def node_facts(node: JSON) -> NodeCidrFacts:
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    return NodeCidrFacts(name=meta.get("name", ""), spec_pod_cidr=spec.get("podCIDR"),
                         annotation=(meta.get("annotations") or {}).get(POD_CIDR_ANNOTATION),
                         created=meta.get("creationTimestamp") or "")


def node_pod_cidr(node: JSON) -> str:
    """The range a node uses: `spec.podCIDR` wins, else ours, else none yet ("")."""
    facts = node_facts(node)
    return facts.spec_pod_cidr or facts.annotation or ""
