"""What the policy engine produces: per-endpoint allow/deny entries and isolation (pure).

The desired state is expressed with port *ranges* (what rules say); `flattening` turns it into
the LPM entries the BPF policy map holds. Keys are relative to one endpoint; the endpoint is
the outer key of `DesiredPolicy.endpoints`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from membrane.k8s_models import ObjectRef


class Direction(IntEnum):
    """Values as in the BPF key (`direction` u8)."""

    INGRESS = 0
    EGRESS = 1

    @property
    def label(self) -> str:
        return self.name.lower()


class Protocol(IntEnum):
    """IP protocol numbers; ANY (0) is the wildcard of a rule without ports."""

    ANY = 0
    TCP = 6
    UDP = 17
    SCTP = 132

    @classmethod
    def parse(cls, text: str | int) -> Protocol:
        if isinstance(text, int):
            return cls(text)
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown protocol {text!r} (TCP, UDP, SCTP or ANY)") from None


class Verdict(IntEnum):
    """Values as in the BPF value (`verdict` u8). DENY beats ALLOW wherever both apply."""

    ALLOW = 1
    DENY = 2


PORT_MIN = 0
PORT_MAX = 65535


@dataclass(frozen=True, order=True)
class RuleRef:
    """One rule of one policy: what flow logs and `policy trace` name."""

    policy: ObjectRef
    direction: Direction
    index: int
    kind: str = "NetworkPolicy"

    def __str__(self) -> str:
        return f"{self.kind} {self.policy} {self.direction.label}[{self.index}]"


@dataclass(frozen=True, order=True)
class PolicyKey:
    """(direction, peer identity, protocol, inclusive port range) for one endpoint.

    `identity` 0 is "any peer"; `protocol` ANY always comes with the full port range.
    """

    direction: Direction
    identity: int
    protocol: Protocol
    port_start: int = PORT_MIN
    port_end: int = PORT_MAX

    def covers(self, protocol: Protocol, port: int) -> bool:
        if self.protocol is Protocol.ANY:
            return True
        return self.protocol == protocol and self.port_start <= port <= self.port_end


@dataclass(frozen=True)
class PolicyValue:
    verdict: Verdict
    rules: frozenset[RuleRef]

    def merged(self, other: PolicyValue) -> PolicyValue:
        """Two rules on the same key: deny wins; same verdict: union of the deciding rules."""
        if self.verdict != other.verdict:
            return self if self.verdict is Verdict.DENY else other
        return PolicyValue(self.verdict, self.rules | other.rules)


@dataclass(frozen=True)
class EndpointPolicy:
    """Desired policy of one endpoint.

    `selected_by[d]` are the policies selecting the endpoint for direction d: non-empty means
    isolated in d (default deny, only `entries` allow); empty means open in d.
    """

    entries: Mapping[PolicyKey, PolicyValue] = field(default_factory=dict)
    selected_by: Mapping[Direction, frozenset[ObjectRef]] = field(default_factory=dict)

    def isolated(self, direction: Direction) -> bool:
        return bool(self.selected_by.get(direction))

    @property
    def isolation(self) -> frozenset[Direction]:
        return frozenset(d for d in Direction if self.isolated(d))


@dataclass(frozen=True)
class DesiredPolicy:
    """Engine output: every endpoint's policy, plus the CIDR identities (ipcache and CIDR map).

    `cidr_identities` maps normalised prefixes to node-local identities. Addresses matching
    no ipcache prefix are WORLD, so /0 prefixes are not listed (they select WORLD).
    """

    endpoints: Mapping[ObjectRef, EndpointPolicy] = field(default_factory=dict)
    cidr_identities: Mapping[str, int] = field(default_factory=dict)

    def isolated(self, direction: Direction) -> frozenset[ObjectRef]:
        return frozenset(ref for ref, ep in self.endpoints.items() if ep.isolated(direction))


@dataclass(frozen=True)
class EndpointDelta:
    """Change of one endpoint's entries: upserts (new or changed values) and removals."""

    upserts: Mapping[PolicyKey, PolicyValue] = field(default_factory=dict)
    removals: frozenset[PolicyKey] = frozenset()
    # The policies selecting the endpoint, when that changed or the endpoint is new.
    selected_by: Mapping[Direction, frozenset[ObjectRef]] | None = None
    deleted: bool = False  # the endpoint is gone (or no longer enforced, e.g. hostNetwork)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.removals or self.selected_by is not None or self.deleted)


@dataclass
class PolicyDelta:
    """What one update changed: per-endpoint deltas and ipcache CIDR changes."""

    endpoints: dict[ObjectRef, EndpointDelta] = field(default_factory=dict)
    cidr_upserts: dict[str, int] = field(default_factory=dict)
    cidr_removals: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.endpoints or self.cidr_upserts or self.cidr_removals)


def diff_endpoint(old: EndpointPolicy | None, new: EndpointPolicy | None) -> EndpointDelta:
    """The delta turning `old` into `new` (None = endpoint absent)."""
    old_entries = old.entries if old else {}
    new_entries = new.entries if new else {}
    upserts = {k: v for k, v in new_entries.items() if old_entries.get(k) != v}
    removals = frozenset(k for k in old_entries if k not in new_entries)
    old_sel = dict(old.selected_by) if old else {}
    new_sel = dict(new.selected_by) if new else {}
    return EndpointDelta(
        upserts=upserts,
        removals=removals,
        selected_by=None if new is None or (old is not None and old_sel == new_sel) else new_sel,
        deleted=old is not None and new is None,
    )
