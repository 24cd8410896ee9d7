"""CIDR identities for ipBlock peers, shaped for a longest-prefix-match ipcache (pure).

Every `cidr` and every `except` of every ipBlock in every policy becomes an ipcache prefix
with its own node-local identity. An address then resolves (LPM) to the longest such prefix P
containing it, and an ipBlock allows it exactly when P lies inside the block's cidr and inside
none of its excepts (`IpBlock.selects_prefix`). Why this is exact, whatever other rules add:
if the address is in cidr and in no except, P is at least as long as cidr (cidr contains it),
so P is inside cidr, and P inside an except would put the address in that except; if the
address is in an except E, P is at least as long as E, so P is inside E and is rejected.
Overlapping blocks of different rules therefore just add prefixes; each rule's allowed
identity set is computed against the whole table.

/0 prefixes are not allocated: an address matching no ipcache prefix is WORLD (2), so a /0
cidr selects WORLD. IPv4 and IPv6 share WORLD (a reserved number for each is not in the
design), so `0.0.0.0/0` also admits IPv6 addresses outside every IPv6 prefix.

Pod addresses are /32 (/128) ipcache entries with the pod's identity, longer than any policy
prefix, so a pod's address resolves to the pod's identity there. Yet NetworkPolicy wants an
ipBlock to select pod addresses too (upstream e2e: egress to a pod's /32, `except` of a pod's
/32), so the same prefixes also go to a second LPM map holding only them (the datapath's CIDR
map, `mb_cidr_v1`): every address has a CIDR identity, its longest prefix there, else WORLD.
On a new connection the datapath judges the peer's identity, its address's CIDR identity and
"any peer" (`flattening.lookup_flat`), so the argument above holds for pod addresses as well,
while podSelector/namespaceSelector keep working on identities. For an address that is no pod
or node, the ipcache's answer already is its CIDR identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from membrane.identities import (
    IdentityAllocator,
    ReservedIdentity,
    cidr_allocator,
    cidr_labels,
)
from membrane.k8s_models import IPNetwork, ObjectRef
from membrane.policy.rules import IpBlock, parse_prefix


class CidrTable:
    """Prefixes referenced by policies -> node-local identities, reference counted."""

    def __init__(self, allocator: IdentityAllocator | None = None) -> None:
        self.allocator = allocator if allocator is not None else cidr_allocator()
        self._by_policy: dict[ObjectRef, frozenset[str]] = {}
        self._ids: dict[IPNetwork, int] = {}
        # (IP version, prefix length) -> prefixes of that length: `select` looks a block's own
        # length up directly and scans only longer lengths.
        self._by_len: dict[tuple[int, int], dict[IPNetwork, int]] = {}

    def identities(self) -> dict[str, int]:
        return {str(prefix): identity for prefix, identity in sorted(
            self._ids.items(), key=lambda item: (item[0].version, item[0]))}

    def set_policy(
        self, policy: ObjectRef, prefixes: Iterable[str]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Record the prefixes a policy needs; returns (added, removed) prefix -> identity."""
        wanted = frozenset(str(parse_prefix(p)) for p in prefixes if parse_prefix(p).prefixlen)
        old = self._by_policy.get(policy, frozenset())
        owner = str(policy)
        added: dict[str, int] = {}
        removed: dict[str, int] = {}
        for prefix in sorted(wanted - old):
            network = parse_prefix(prefix)
            identity = self.allocator.acquire(cidr_labels(prefix), owner)
            if network not in self._ids:
                self._ids[network] = identity
                self._by_len.setdefault((network.version, network.prefixlen), {})[network] = identity
                added[prefix] = identity
        for prefix in sorted(old - wanted):
            labels = cidr_labels(prefix)
            released = self.allocator.release(labels, owner)
            if released is not None:
                # The local table frees at once: nothing outside this node holds the number,
                # and the allocator still prefers never-used numbers for the next prefix.
                self.allocator.gc()
                network = parse_prefix(prefix)
                del self._ids[network]
                bucket = self._by_len[(network.version, network.prefixlen)]
                del bucket[network]
                if not bucket:
                    del self._by_len[(network.version, network.prefixlen)]
                removed[prefix] = released
        if wanted:
            self._by_policy[policy] = wanted
        else:
            self._by_policy.pop(policy, None)
        return added, removed

    def identity_of(self, prefix: IPNetwork) -> int | None:
        """The identity of one table prefix (None: not in the table)."""
        return self._ids.get(prefix)

    def select(self, block: IpBlock) -> frozenset[int]:
        """Identities an ipBlock allows: table prefixes inside cidr and outside every except."""
        cidr = block.cidr
        selected: set[int] = set()
        for (version, length), bucket in self._by_len.items():
            if version != cidr.version or length < cidr.prefixlen:
                continue
            if length == cidr.prefixlen:
                identity = bucket.get(cidr)
                if identity is not None and block.selects_prefix(cidr):
                    selected.add(identity)
                continue
            selected.update(identity for prefix, identity in bucket.items() if block.selects_prefix(prefix))
        if block.cidr.prefixlen == 0:
            selected.add(int(ReservedIdentity.WORLD))
        return frozenset(selected)

    def affected_by(self, changed: Iterable[str], blocks: Iterable[IpBlock]) -> bool:
        """Whether adding/removing `changed` prefixes changes what any of `blocks` selects."""
        networks = [parse_prefix(p) for p in changed]
        return any(b.selects_prefix(n) for b in blocks for n in networks)


def lpm_lookup(table: Mapping[str, int], address: str) -> int | None:
    """Longest-prefix match of an address in a prefix -> identity table (None: no match)."""
    ip = parse_prefix(address).network_address
    best: tuple[int, int] | None = None
    for text, identity in table.items():
        prefix = parse_prefix(text)
        if prefix.version == ip.version and ip in prefix and (best is None or prefix.prefixlen > best[0]):
            best = (prefix.prefixlen, identity)
    return best[1] if best else None
