"""Desired policy -> flat BPF policy map entries, and the rule table for flow logs (pure).

Map layout (the datapath's `struct policy_key` / `struct policy_value`): an LPM trie

    key   { u32 prefixlen; u32 endpoint_id; u32 identity; u8 direction; u8 protocol;
            __be16 dport; }
    value { u8 verdict; u8 pad[3]; u32 rule_ref; }

Port ranges are encoded as port *prefixes* (like Cilium's LPM on port), not stored as ranges:
a hash map keyed by a range cannot be looked up by a packet's port, and scanning ranges is not
possible in BPF at line rate. An inclusive range becomes its minimal cover of aligned
power-of-two blocks (at most 30 for any range, 1 for a single port, 1 for "all ports"), and
the LPM trie finds the most specific one in a single lookup. The prefix covers endpoint,
identity and direction always (72 bits), then protocol (8 bits) unless the rule has no ports
(protocol ANY = 0, prefixlen 72), then the leading `port_prefix` bits of the big-endian port.
No end port is needed in the value.

Datapath contract (`lookup_flat` is its executable model): look up (identity), (CIDR
identity of the peer's address, when it differs: an ipBlock selects pod addresses too, see
`cidrs`) and (identity 0 = any peer); a DENY from any of them wins, else an ALLOW from any of
them allows, else drop.
Endpoints not isolated in a direction get one allow-all entry (identity 0, protocol ANY) with
`rule_ref` 0 (NOT_ISOLATED), so "no entry" always means drop. Within one identity, LPM picks
the most specific block, so each block carries the rules of every block covering it, and a
DENY block turns the allow blocks it covers into DENY (deny precedence; our CRD will need it).

`rule_ref` indexes a `RuleTable` (interned sets of `RuleRef`): the reverse mapping from a map
entry (and so from a flow event carrying it) to the policies and rules that decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from membrane.delta import Delta, diff
from membrane.identities import IDENTITY_ANY
from membrane.k8s_models import ObjectRef
from membrane.policy.entries import (
    PORT_MAX,
    DesiredPolicy,
    Direction,
    EndpointPolicy,
    PolicyValue,
    Protocol,
    RuleRef,
    Verdict,
)

PORT_BITS = 16
LPM_FIXED_BITS = 32 + 32 + 8  # endpoint id, identity, direction
LPM_PROTOCOL_BITS = 8
NOT_ISOLATED = 0  # rule_ref of the allow-all entry of an endpoint no policy selects


class FlatKey(NamedTuple):
    endpoint_id: int
    identity: int
    direction: int
    protocol: int
    port: int  # first port of the block (bits below port_prefix are 0)
    port_prefix: int  # significant leading bits of port, 0..16 (0 with protocol ANY)

    @property
    def prefixlen(self) -> int:
        if self.protocol == Protocol.ANY:
            return LPM_FIXED_BITS
        return LPM_FIXED_BITS + LPM_PROTOCOL_BITS + self.port_prefix

    @property
    def port_end(self) -> int:
        return self.port + (1 << (PORT_BITS - self.port_prefix)) - 1

    def covers(self, other: FlatKey) -> bool:
        """Whether every packet matching `other` also matches this key (same endpoint)."""
        if (self.endpoint_id, self.identity, self.direction) != (
            other.endpoint_id,
            other.identity,
            other.direction,
        ):
            return False
        if self.protocol == Protocol.ANY:
            return True
        if other.protocol != self.protocol or other.port_prefix < self.port_prefix:
            return False
        shift = PORT_BITS - self.port_prefix
        return other.port >> shift == self.port >> shift


class FlatValue(NamedTuple):
    verdict: int
    rule_ref: int


def port_range_prefixes(start: int, end: int) -> list[tuple[int, int]]:
    """Minimal cover of [start, end] by aligned blocks, as (first port, prefix bits)."""
    if not 0 <= start <= end <= PORT_MAX:
        raise ValueError(f"bad port range {start}-{end}")
    blocks: list[tuple[int, int]] = []
    while start <= end:
        size_bits = 0
        while size_bits < PORT_BITS:
            bigger = 1 << (size_bits + 1)
            if start % bigger or start + bigger - 1 > end:
                break
            size_bits += 1
        blocks.append((start, PORT_BITS - size_bits))
        start += 1 << size_bits
    return blocks


class RuleTable:
    """Interned sets of deciding rules: `rule_ref` number <-> rules (0 = not isolated)."""

    def __init__(self) -> None:
        self._by_ref: dict[int, frozenset[RuleRef]] = {}
        self._by_rules: dict[frozenset[RuleRef], int] = {}
        self._next = 1

    def intern(self, rules: frozenset[RuleRef]) -> int:
        if not rules:
            return NOT_ISOLATED
        ref = self._by_rules.get(rules)
        if ref is None:
            ref = self._by_rules[rules] = self._next
            self._by_ref[ref] = rules
            self._next += 1
        return ref

    def lookup(self, ref: int) -> frozenset[RuleRef]:
        return self._by_ref.get(ref, frozenset())

    def policies(self, ref: int) -> frozenset[ObjectRef]:
        return frozenset(rule.policy for rule in self.lookup(ref))

    def describe(self, ref: int) -> list[str]:
        if ref == NOT_ISOLATED:
            return ["no policy selects the endpoint in this direction"]
        return [str(rule) for rule in sorted(self.lookup(ref))] or [f"unknown rule ref {ref}"]

    def retain(self, used: Iterable[int]) -> None:
        """Forget refs no map entry uses any more (numbers are not reused)."""
        keep = set(used)
        for ref in [r for r in self._by_ref if r not in keep]:
            del self._by_rules[self._by_ref.pop(ref)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "next": self._next,
            "refs": {
                str(ref): [
                    [r.kind, r.policy.namespace, r.policy.name, r.direction.label, r.index]
                    for r in sorted(rules)
                ]
                for ref, rules in sorted(self._by_ref.items())
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RuleTable:
        table = cls()
        table._next = int(data["next"])
        for text, items in data["refs"].items():
            rules = frozenset(
                RuleRef(ObjectRef(ns, name), Direction[direction.upper()], int(index), kind)
                for kind, ns, name, direction, index in items
            )
            table._by_ref[int(text)] = rules
            table._by_rules[rules] = int(text)
        return table


def _blocks(endpoint_id: int, endpoint: EndpointPolicy) -> dict[FlatKey, PolicyValue]:
    blocks: dict[FlatKey, PolicyValue] = {}

    def add(key: FlatKey, value: PolicyValue) -> None:
        old = blocks.get(key)
        blocks[key] = value if old is None else old.merged(value)

    for direction in Direction:
        if not endpoint.isolated(direction):
            key = FlatKey(endpoint_id, IDENTITY_ANY, direction, Protocol.ANY, 0, 0)
            add(key, PolicyValue(Verdict.ALLOW, frozenset()))
    for pkey, value in endpoint.entries.items():
        if pkey.protocol is Protocol.ANY:
            add(FlatKey(endpoint_id, pkey.identity, pkey.direction, Protocol.ANY, 0, 0), value)
            continue
        for port, prefix in port_range_prefixes(pkey.port_start, pkey.port_end):
            key = FlatKey(endpoint_id, pkey.identity, pkey.direction, pkey.protocol, port, prefix)
            add(key, value)
    return blocks


def flatten_endpoint(
    endpoint_id: int, endpoint: EndpointPolicy, rules: RuleTable
) -> dict[FlatKey, FlatValue]:
    """One endpoint's map entries, with covering rules and deny precedence folded in."""
    blocks = _blocks(endpoint_id, endpoint)
    groups: dict[tuple[int, int], list[FlatKey]] = {}
    for key in blocks:
        groups.setdefault((key.identity, key.direction), []).append(key)
    flat: dict[FlatKey, FlatValue] = {}
    for keys in groups.values():
        present = set(keys)
        for key in sorted(keys):
            # Only these keys can cover `key` (what `FlatKey.covers` says, as lookups: linear
            # in the keys, where comparing every pair took minutes for 10,000 ports).
            covering = [blocks[other] for other in _coverers(key) if other in present]
            denies = [v for v in covering if v.verdict is Verdict.DENY]
            deciding = denies or covering
            refs = frozenset().union(*(v.rules for v in deciding))
            verdict = Verdict.DENY if denies else Verdict.ALLOW
            flat[key] = FlatValue(int(verdict), rules.intern(refs))
    return dict(sorted(flat.items()))


def _coverers(key: FlatKey) -> list[FlatKey]:
    """Every key that covers `key` (itself included): the protocol-ANY key of its endpoint,
    identity and direction, and the aligned blocks of its protocol that contain its port."""
    found = [FlatKey(key.endpoint_id, key.identity, key.direction, Protocol.ANY, 0, 0)]
    if key.protocol == Protocol.ANY:
        return found
    for prefix in range(key.port_prefix + 1):
        shift = PORT_BITS - prefix
        found.append(FlatKey(key.endpoint_id, key.identity, key.direction, key.protocol,
                             (key.port >> shift) << shift, prefix))
    return found


def flatten(
    desired: DesiredPolicy, endpoint_ids: Mapping[ObjectRef, int], rules: RuleTable
) -> dict[FlatKey, FlatValue]:
    """The whole policy map for the endpoints this node hosts (`endpoint_ids`)."""
    flat: dict[FlatKey, FlatValue] = {}
    for ref, endpoint in sorted(desired.endpoints.items()):
        endpoint_id = endpoint_ids.get(ref)
        if endpoint_id is not None:
            flat.update(flatten_endpoint(endpoint_id, endpoint, rules))
    return flat


def flat_diff(
    desired: Mapping[FlatKey, FlatValue], actual: Mapping[FlatKey, FlatValue]
) -> Delta[FlatKey, FlatValue]:
    return diff(desired, actual)


def _lpm(
    flat: Mapping[FlatKey, FlatValue],
    endpoint_id: int,
    direction: int,
    identity: int,
    protocol: int,
    port: int,
) -> FlatValue | None:
    for prefix in range(PORT_BITS, -1, -1):
        shift = PORT_BITS - prefix
        key = FlatKey(endpoint_id, identity, direction, protocol, (port >> shift) << shift, prefix)
        if key in flat:
            return flat[key]
    return flat.get(FlatKey(endpoint_id, identity, direction, Protocol.ANY, 0, 0))


def lookup_flat(
    flat: Mapping[FlatKey, FlatValue],
    endpoint_id: int,
    direction: Direction,
    identity: int,
    protocol: Protocol,
    port: int,
    cidr_identity: int | None = None,
) -> FlatValue | None:
    """What the datapath decides for a new connection; None means drop (no entry).

    `identity`: the peer's (ipcache, or the VNI); `cidr_identity`: the CIDR identity of the
    peer's address (longest ipBlock prefix, else WORLD; None: not looked up). Among equal
    verdicts the peer's entry is reported first, then the CIDR one, then "any peer".
    """
    identities = [identity]
    if cidr_identity not in (None, IDENTITY_ANY, identity):
        identities.append(cidr_identity)
    if identity != IDENTITY_ANY:
        identities.append(IDENTITY_ANY)
    found = [
        value
        for value in (_lpm(flat, endpoint_id, direction, ident, protocol, port) for ident in identities)
        if value is not None
    ]
    denies = [v for v in found if v.verdict == Verdict.DENY]
    return next(iter(denies or found), None)
