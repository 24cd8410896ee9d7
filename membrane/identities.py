"""Security identities: the labels that matter, and the numbers standing for them (pure).

An identity is the number the datapath sees instead of an address. It is derived from the
labels that decide policy: the pod's labels (minus the ones that differ per pod or per rollout,
which would give every pod its own identity and churn them on every rollout), the namespace's
labels and the namespace's name. A canonical `LabelSet` keys every label by its source:

    k8s:<key>=<v>   a pod label              ns:<key>=<v>   a namespace label
    meta:namespace=<name>                    cidr:<prefix>  a CIDR identity (local)
    reserved:<name>                          a reserved identity

Real label keys contain no ':', so a source prefix can never be forged by a pod label.

Number space (u32 in maps; the VNI carries only 24 bits, so travelling identities fit 24):

    0                    "any identity" wildcard in policy map keys, never allocated
    1..7                 reserved: host, world, unmanaged, health, init, remote-node,
                         kube-apiserver
    256 .. 2^24-1        cluster identities, allocated cluster-wide by the operator
    2^24 | (1..2^24-1)   node-local identities (CIDR identities for ipBlock peers): bit 24 set,
                         so they can never collide with a cluster identity and are recognisably
                         local; they never travel in a VNI (the receiving node derives a
                         CIDR's identity from its own ipcache), like Cilium's local scope.

`IdentityAllocator` maps label sets to numbers with reference counts per owner, releases into
a grace period (a re-created pod gets its number back), and never reuses a number while unused
ones remain, so stale conntrack or ipcache entries on other nodes are not attributed to a new
owner. Time is an input (`now`), and the whole state round-trips through `to_dict`/`from_dict`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from membrane.labels import namespace_labels


class ReservedIdentity(IntEnum):
    HOST = 1
    WORLD = 2
    UNMANAGED = 3
    HEALTH = 4
    INIT = 5
    REMOTE_NODE = 6
    KUBE_APISERVER = 7


IDENTITY_ANY = 0
CLUSTER_IDENTITY_MIN = 256
CLUSTER_IDENTITY_MAX = (1 << 24) - 1
LOCAL_IDENTITY_FLAG = 1 << 24
LOCAL_IDENTITY_MIN = LOCAL_IDENTITY_FLAG | 1
LOCAL_IDENTITY_MAX = LOCAL_IDENTITY_FLAG | ((1 << 24) - 1)

# Labels that identify one pod or one rollout generation, not a role. Cilium's default label
# filter drops the same family.
IGNORED_POD_LABELS = frozenset(
    {
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "controller-uid",
        "batch.kubernetes.io/controller-uid",
        "batch.kubernetes.io/job-completion-index",
        # Set on the operator's leader pod for Service routing; it moves on every failover,
        # and a new identity each time would churn every node's maps for nothing.
        "membrane.io/operator-leader",
    }
)

POD_SOURCE = "k8s:"
NAMESPACE_SOURCE = "ns:"
NAMESPACE_NAME_KEY = "meta:namespace"
CIDR_SOURCE = "cidr:"
RESERVED_SOURCE = "reserved:"


def is_reserved(identity: int) -> bool:
    return 0 < identity < CLUSTER_IDENTITY_MIN


def is_local(identity: int) -> bool:
    return bool(identity & LOCAL_IDENTITY_FLAG)


def is_cluster(identity: int) -> bool:
    return CLUSTER_IDENTITY_MIN <= identity <= CLUSTER_IDENTITY_MAX


@dataclass(frozen=True, order=True)
class LabelSet:
    """Canonical, hashable set of source-prefixed labels: sorted (key, value) pairs."""

    items: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, labels: Mapping[str, str]) -> LabelSet:
        return cls(tuple(sorted(labels.items())))

    @classmethod
    def from_strings(cls, texts: Iterable[str]) -> LabelSet:
        pairs: dict[str, str] = {}
        for text in texts:
            key, _, value = text.partition("=")
            pairs[key] = value
        return cls.of(pairs)

    def to_strings(self) -> list[str]:
        return [f"{k}={v}" if v else k for k, v in self.items]

    def _strip(self, source: str) -> dict[str, str]:
        return {k[len(source):]: v for k, v in self.items if k.startswith(source)}

    @property
    def pod_labels(self) -> dict[str, str]:
        return self._strip(POD_SOURCE)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return self._strip(NAMESPACE_SOURCE)

    @property
    def namespace(self) -> str | None:
        return dict(self.items).get(NAMESPACE_NAME_KEY)

    def __str__(self) -> str:
        return ",".join(self.to_strings())


def filter_pod_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Pod labels that take part in identity (and so in peer selection)."""
    return {k: v for k, v in labels.items() if k not in IGNORED_POD_LABELS}


def identity_labels(
    pod_labels: Mapping[str, str], namespace: str, ns_labels: Mapping[str, str]
) -> LabelSet:
    """The canonical labels of a pod: filtered pod labels, namespace labels, namespace name."""
    pairs = {POD_SOURCE + k: v for k, v in filter_pod_labels(pod_labels).items()}
    pairs.update(
        {NAMESPACE_SOURCE + k: v for k, v in namespace_labels(namespace, ns_labels).items()}
    )
    pairs[NAMESPACE_NAME_KEY] = namespace
    return LabelSet.of(pairs)


def cidr_labels(prefix: str) -> LabelSet:
    network = ipaddress.ip_network(prefix, strict=False)
    return LabelSet(((CIDR_SOURCE + str(network), ""),))


def reserved_labels(identity: ReservedIdentity) -> LabelSet:
    return LabelSet(((RESERVED_SOURCE + identity.name.lower().replace("_", "-"), ""),))


class IdentitiesExhausted(Exception):
    pass


@dataclass
class _Entry:
    labels: LabelSet
    owners: set[str] = field(default_factory=set)
    released_at: float | None = None  # when the last owner left; None while owned


class IdentityAllocator:
    """Label set -> identity number, reference counted by owner, with a reuse grace period.

    - `acquire(labels, owner)` is idempotent per owner; the same labels get the same number
      as long as the entry exists (owned, or released less than `grace` ago).
    - `release(labels, owner)` drops one owner; the last one starts the grace period.
    - `gc(now)` frees entries released at least `grace` ago; freed numbers are reused only
      after every never-used number has been handed out, oldest freed first.
    """

    def __init__(
        self,
        first: int = CLUSTER_IDENTITY_MIN,
        last: int = CLUSTER_IDENTITY_MAX,
        grace: float = 0.0,
    ) -> None:
        if not 0 < first <= last:
            raise ValueError(f"bad identity range {first}..{last}")
        self.first = first
        self.last = last
        self.grace = grace
        self._next = first
        self._free: list[int] = []
        self._by_id: dict[int, _Entry] = {}
        self._by_labels: dict[LabelSet, int] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def lookup(self, labels: LabelSet) -> int | None:
        return self._by_labels.get(labels)

    def labels_of(self, identity: int) -> LabelSet | None:
        entry = self._by_id.get(identity)
        return entry.labels if entry else None

    def owners_of(self, identity: int) -> frozenset[str]:
        entry = self._by_id.get(identity)
        return frozenset(entry.owners) if entry else frozenset()

    def items(self) -> dict[int, LabelSet]:
        return {identity: entry.labels for identity, entry in self._by_id.items()}

    def acquire(self, labels: LabelSet, owner: str) -> int:
        identity = self._by_labels.get(labels)
        if identity is None:
            identity = self._take_number()
            self._by_id[identity] = _Entry(labels)
            self._by_labels[labels] = identity
        entry = self._by_id[identity]
        entry.owners.add(owner)
        entry.released_at = None
        return identity

    def claim(self, identity: int, labels: LabelSet) -> bool:
        """Give `labels` this exact number (rebuilding the numbering from what the kernel still
        uses); False when the number or the labels are taken, or the number is out of range."""
        if not self.first <= identity <= self.last or identity in self._by_id or labels in self._by_labels:
            return False
        self._by_id[identity] = _Entry(labels, released_at=0.0)  # unowned until a pod acquires it
        self._by_labels[labels] = identity
        if identity in self._free:
            self._free.remove(identity)
        self._next = max(self._next, identity + 1)
        return True

    def release(self, labels: LabelSet, owner: str, now: float = 0.0) -> int | None:
        """Drop `owner`; returns the identity if that left it unowned."""
        identity = self._by_labels.get(labels)
        if identity is None:
            return None
        entry = self._by_id[identity]
        entry.owners.discard(owner)
        if entry.owners or entry.released_at is not None:
            return None
        entry.released_at = now
        return identity

    def gc(self, now: float = 0.0) -> list[int]:
        """Free unowned entries whose grace period is over; returns the freed numbers."""
        freed = sorted(
            identity
            for identity, entry in self._by_id.items()
            if entry.released_at is not None and now - entry.released_at >= self.grace
        )
        for identity in freed:
            entry = self._by_id.pop(identity)
            del self._by_labels[entry.labels]
            self._free.append(identity)
        return freed

    def _take_number(self) -> int:
        if self._next <= self.last:
            self._next += 1
            return self._next - 1
        if self._free:
            return self._free.pop(0)
        raise IdentitiesExhausted(f"no free identity in {self.first}..{self.last}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "first": self.first,
            "last": self.last,
            "grace": self.grace,
            "next": self._next,
            "free": list(self._free),
            "identities": [
                {
                    "id": identity,
                    "labels": entry.labels.to_strings(),
                    "owners": sorted(entry.owners),
                    "releasedAt": entry.released_at,
                }
                for identity, entry in sorted(self._by_id.items())
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IdentityAllocator:
        if data.get("version") != 1:
            raise ValueError(f"unsupported identity state version {data.get('version')!r}")
        allocator = cls(int(data["first"]), int(data["last"]), float(data["grace"]))
        allocator._next = int(data["next"])
        allocator._free = [int(i) for i in data["free"]]
        for item in data["identities"]:
            identity = int(item["id"])
            labels = LabelSet.from_strings(item["labels"])
            if not allocator.first <= identity < allocator._next:
                raise ValueError(f"identity {identity} outside the allocated range")
            if identity in allocator._by_id or labels in allocator._by_labels:
                raise ValueError(f"duplicate identity {identity} or labels {labels}")
            released = item.get("releasedAt")
            allocator._by_id[identity] = _Entry(
                labels, set(item["owners"]), None if released is None else float(released)
            )
            allocator._by_labels[labels] = identity
        if set(allocator._free) & set(allocator._by_id):
            raise ValueError("an identity is both free and in use")
        return allocator


def cidr_allocator() -> IdentityAllocator:
    """Allocator of node-local CIDR identities (bit 24 set)."""
    return IdentityAllocator(LOCAL_IDENTITY_MIN, LOCAL_IDENTITY_MAX)
