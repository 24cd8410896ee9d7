"""The load balancer's map contents (pure): service frontends -> what the lb4 maps hold.

Input: the service table (`membrane.services`: frontend -> the backends it uses, already chosen).
Output, per frontend, the entries of the maps `bpf/lib/lb.h` reads:

- `lb_masters`: (address, port, protocol, slot 0) -> how many slots, the frontend's id
  (`rev_nat_index`), its flags and affinity timeout; `lb_slots`: (..., slot 1..n) -> a backend id.
  Both are the kernel map `mb_lb4_services_v1`; they are separate roles here so the write plan can
  put slots before masters (a master never counts a slot that is not written yet) and delete
  masters before their slots;
- `lb_backends`: backend id -> address, port, protocol, flags (shared by every frontend using it);
- `lb_rev_nat`: frontend id -> the frontend (replies and getpeername show it again);
- `lb_members`: (backend id, frontend id) -> slot: a remembered choice (ClientIP affinity, an
  unconnected UDP socket's backend) is kept only while its backend still serves the frontend;
- `lb_maglev`: (frontend id, index 0..M-1) -> backend id, the Maglev table (`membrane.maglev`,
  M a prime, `--lb-maglev-table-size`) of each frontend the per-packet path serves (NodePort,
  externalIP, LoadBalancer IP; `bpf/lib/nodeport.h`). It depends only on the backends' keys, so a
  restarted agent (and every node) computes the same table.

Ids are stable: a frontend keeps its id and a backend its id while they exist (`LbIds`), and a
restarted agent reads them back from the pinned maps (`LbIds.seed`), so it computes exactly the
contents the maps already hold and writes nothing. A freed id is not handed out again before
the counter wraps, so one apply never turns an id that old slots still name into another backend.

`LB_ORDER` is the write plan: new backends, frontends, members, slots, Maglev entries, masters;
then deletes in the reverse order. No lookup in between ever finds a slot whose backend is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, Final, Protocol

from membrane.maglev import maglev_table
from membrane.map_plan import Op

PROTOCOLS: Final = {"TCP": 6, "UDP": 17, "SCTP": 132}
PROTOCOL_NAMES: Final = {number: name for name, number in PROTOCOLS.items()}
MAX_FRONTEND_ID: Final = 0xFFFF  # rev_nat_index is a __u16
MAX_BACKEND_ID: Final = 0xFFFF_FFFF
MAX_SLOTS: Final = 0xFFFF  # count is a __u16

# mb_lb4_service.flags (MB_LB_F_*; agent/datapath/layout.LbFlag checks the C side)
F_CLUSTER_IP: Final = 0x1
F_NODE_PORT: Final = 0x2
F_EXTERNAL_IP: Final = 0x4
F_LOAD_BALANCER: Final = 0x8
F_AFFINITY: Final = 0x10
F_TWO_SCOPES: Final = 0x20
F_LOCAL_ONLY: Final = 0x40
F_TERMINATING: Final = 0x80
KIND_FLAGS: Final = {"ClusterIP": F_CLUSTER_IP, "NodePort": F_NODE_PORT, "ExternalIP": F_EXTERNAL_IP,
                     "LoadBalancer": F_LOAD_BALANCER}
# mb_lb4_backend.flags
B_TERMINATING: Final = 0x1
B_LOCAL: Final = 0x2

LB_ROLES: Final = ("lb_backends", "lb_rev_nat", "lb_members", "lb_slots", "lb_maglev", "lb_masters")
DEFAULT_MAGLEV_SIZE: Final = 1021  # prime: ~100 entries per backend up to 10 backends per frontend
PER_PACKET_KINDS: Final = frozenset({"NodePort", "ExternalIP", "LoadBalancer"})  # served by bpf_host.c
LB_ORDER: Final[tuple[tuple[str, Op], ...]] = (
    *((role, Op.UPDATE) for role in LB_ROLES),
    *((role, Op.DELETE) for role in reversed(LB_ROLES)),
)


# --- what the service table gives (membrane.services), as far as this module reads it -----------
class FrontendLike(Protocol):
    @property
    def ip(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def protocol(self) -> str: ...
    @property
    def kind(self) -> str: ...


class BackendLike(Protocol):
    @property
    def ip(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def node(self) -> str: ...
    @property
    def ready(self) -> bool: ...
    @property
    def terminating(self) -> bool: ...


class ServiceFrontendLike(Protocol):
    @property
    def frontend(self) -> Any: ...  # FrontendLike (a Protocol attribute would have to be invariant)
    @property
    def backends(self) -> tuple[Any, ...]: ...  # BackendLike
    @property
    def affinity_timeout(self) -> int: ...
    @property
    def external_local(self) -> bool: ...
    @property
    def internal_local(self) -> bool: ...


# --- map keys and values -------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class LbKey:
    """`struct mb_lb4_key`: a frontend's master entry (slot 0) or one of its backend slots."""

    address: IPv4Address
    port: int
    protocol: int
    slot: int = 0
    scope: int = 0  # MB_LB_SCOPE_EXTERNAL: the only set written today

    def master(self) -> LbKey:
        return LbKey(self.address, self.port, self.protocol, 0, self.scope)


@dataclass(frozen=True)
class LbService:
    """`struct mb_lb4_service`: master (count, flags, affinity) or slot (backend_id)."""

    backend_id: int = 0
    count: int = 0
    rev_nat_index: int = 0
    flags: int = 0
    affinity_timeout_s: int = 0


@dataclass(frozen=True, order=True)
class LbBackend:
    """`struct mb_lb4_backend`."""

    address: IPv4Address
    port: int
    protocol: int
    flags: int = 0

    @property
    def ident(self) -> tuple[IPv4Address, int, int, int]:
        """What a backend id stands for. The flags are part of it: two services whose slices
        disagree about an endpoint (one updated before the other) get two ids, never one entry
        whose flags depend on which was written last."""
        return (self.address, self.port, self.protocol, self.flags)


@dataclass(frozen=True, order=True)
class LbFrontendAddr:
    """`struct mb_lb4_rev_nat`: what a frontend id stands for."""

    address: IPv4Address
    port: int
    protocol: int


@dataclass(frozen=True, order=True)
class LbMaglevKey:
    """`struct mb_lb4_maglev_key`: one entry of a frontend's Maglev table."""

    rev_nat_index: int
    index: int


@dataclass(frozen=True, order=True)
class LbMemberKey:
    backend_id: int
    rev_nat_index: int


def frontend_addr(frontend: FrontendLike) -> LbFrontendAddr | None:
    """The IPv4 TCP/UDP frontend the maps can hold; None for what they cannot (IPv6, SCTP)."""
    protocol = PROTOCOLS.get(frontend.protocol)
    try:
        address = IPv4Address(frontend.ip)
    except ValueError:
        return None
    if protocol not in (6, 17):
        return None
    return LbFrontendAddr(address, frontend.port, protocol)


# --- ids -----------------------------------------------------------------------------------------
@dataclass
class _Ids:
    limit: int
    by_item: dict[Any, int] = field(default_factory=dict)
    next_id: int = 1

    def get(self, item: Any) -> int:
        found = self.by_item.get(item)
        if found is not None:
            return found
        used = set(self.by_item.values())
        if len(used) >= self.limit:
            raise OverflowError(f"more than {self.limit} ids")
        candidate = self.next_id
        while candidate in used:  # only after a wrap
            candidate = candidate % self.limit + 1
        self.by_item[item] = candidate
        self.next_id = candidate % self.limit + 1
        return candidate

    def release(self, item: Any) -> None:
        self.by_item.pop(item, None)


class LbIds:
    """Stable ids: frontend -> rev_nat_index (u16), backend (address, port, protocol, flags) -> id."""

    def __init__(self) -> None:
        self.frontends = _Ids(MAX_FRONTEND_ID)
        self.backends = _Ids(MAX_BACKEND_ID)

    def seed(self, rev_nat: Mapping[int, LbFrontendAddr], backends: Mapping[int, LbBackend]) -> None:
        """Take the ids the pinned maps hold (a restarted agent keeps every id)."""
        for index, front in rev_nat.items():
            self.frontends.by_item.setdefault(front, index)
        for backend_id, backend in backends.items():
            self.backends.by_item.setdefault(backend.ident, backend_id)
        for ids in (self.frontends, self.backends):
            if ids.by_item:
                ids.next_id = max(ids.by_item.values()) % ids.limit + 1


# --- one frontend's entries ----------------------------------------------------------------------
@dataclass(frozen=True)
class FrontendEntries:
    """Everything one frontend puts into the maps."""

    front: LbFrontendAddr
    rev_nat_index: int
    masters: dict[LbKey, LbService]
    slots: dict[LbKey, LbService]
    members: dict[LbMemberKey, int]
    backends: dict[int, LbBackend]  # the ids it uses (shared: the manager counts users)
    maglev: dict[LbMaglevKey, int] = field(default_factory=dict)  # per-packet frontends only


def frontend_entries(entry: ServiceFrontendLike, ids: LbIds, node_name: str,
                     maglev_size: int = DEFAULT_MAGLEV_SIZE) -> FrontendEntries | None:
    """The entries of one service frontend (None when the maps cannot hold it: IPv6, SCTP)."""
    front = frontend_addr(entry.frontend)
    if front is None:
        return None
    index = ids.frontends.get(front)
    flags = KIND_FLAGS.get(entry.frontend.kind, 0)
    if entry.affinity_timeout:
        flags |= F_AFFINITY
    local = entry.internal_local if entry.frontend.kind == "ClusterIP" else entry.external_local
    if local:
        flags |= F_LOCAL_ONLY
    usable = [b for b in entry.backends if _ipv4(b.ip) is not None][:MAX_SLOTS]
    if usable and not any(b.ready for b in usable):
        flags |= F_TERMINATING
    master_key = LbKey(front.address, front.port, front.protocol)
    slots: dict[LbKey, LbService] = {}
    members: dict[LbMemberKey, int] = {}
    backends: dict[int, LbBackend] = {}
    for slot, backend in enumerate(usable, start=1):
        value = LbBackend(IPv4Address(backend.ip), backend.port, front.protocol,
                          (B_TERMINATING if backend.terminating else 0)
                          | (B_LOCAL if node_name and backend.node == node_name else 0))
        backend_id = ids.backends.get(value.ident)
        backends[backend_id] = value
        slots[LbKey(front.address, front.port, front.protocol, slot)] = LbService(backend_id, 0, index)
        members.setdefault(LbMemberKey(backend_id, index), slot)
    master = LbService(0, len(slots), index, flags, entry.affinity_timeout if entry.affinity_timeout else 0)
    maglev: dict[LbMaglevKey, int] = {}
    if entry.frontend.kind in PER_PACKET_KINDS and slots:
        ordered = [slots[LbKey(front.address, front.port, front.protocol, n)].backend_id
                   for n in range(1, len(slots) + 1)]
        # The backends' addresses name them (the same on every node); ids are this node's.
        names = [f"{backends[b].address}:{backends[b].port}" for b in ordered]
        maglev = {LbMaglevKey(index, i): ordered[owner]
                  for i, owner in enumerate(maglev_table(names, maglev_size))}
    return FrontendEntries(front, index, {master_key: master}, slots, members, backends, maglev)


def _ipv4(ip: str) -> IPv4Address | None:
    try:
        return IPv4Address(ip)
    except ValueError:
        return None


def desired_contents(table: Iterable[ServiceFrontendLike], node_name: str,
                     ids: LbIds | None = None, maglev_size: int = DEFAULT_MAGLEV_SIZE) -> dict[str, dict[Any, Any]]:
    """Every map's content for a whole service table (the oracle the incremental manager is
    checked against; also what a test compares the kernel maps with)."""
    ids = ids or LbIds()
    out: dict[str, dict[Any, Any]] = {role: {} for role in LB_ROLES}
    for entry in table:
        entries = frontend_entries(entry, ids, node_name, maglev_size)
        if entries is None:
            continue
        out["lb_maglev"].update(entries.maglev)
        out["lb_masters"].update(entries.masters)
        out["lb_slots"].update(entries.slots)
        out["lb_members"].update(entries.members)
        out["lb_backends"].update(entries.backends)
        out["lb_rev_nat"][entries.rev_nat_index] = entries.front
    return out
