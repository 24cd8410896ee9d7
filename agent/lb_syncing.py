"""The load-balancer manager: Service and EndpointSlice records -> the lb4 maps, as differences.

Registered with the state consumer for `Kind.SERVICE` and `Kind.ENDPOINTSLICE` (Felix-style):
`on_update` records a service or slice and marks its service changed; `apply` recomputes the
frontends of the changed services only (`membrane.services.service_frontends`: backends already
chosen, ready else serving-terminating), settles which service owns each (address, port,
protocol) the way `membrane.services.service_table` does (checked against it as an oracle in
tests/unit/test_lb_syncing.py), turns the frontends that changed into map entries
(`membrane.lb_maps.frontend_entries`) and has the map manager write the difference in the
load balancer's plan order (`LB_ORDER`: no frontend ever points at a missing backend).

Ids are stable (`LbIds`): at its first apply (or `resync`) the manager reads the pinned maps and
keeps every frontend's and backend's id, so a restarted agent computes exactly what the maps
hold and writes nothing; connections keep their backends (the socket hooks translated them
once, at connect), remembered choices (affinity, UDP sockets) stay valid.

Readers (`membranectl service list`, flows, metrics) go through `LbQueries` (copies, under this
manager's lock), never the manager's state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Protocol

from membrane.api.state_objects import EndpointSliceState, Kind, ServiceState, StateObject
from membrane.lb_maps import (
    DEFAULT_MAGLEV_SIZE,
    LB_ORDER,
    LB_ROLES,
    PROTOCOL_NAMES,
    FrontendEntries,
    LbIds,
    frontend_entries,
)
from membrane.services import _KIND_RANK, HealthCheck, ServiceFrontend, health_checks, service_frontends

from .lb_port import LbMapPort
from .map_managing import MapCapacityError, MapManager, MapPort

log = logging.getLogger("membrane.lb")

LB_KINDS = (Kind.SERVICE, Kind.ENDPOINTSLICE)  # what the manager is registered for
ServiceRef = tuple[str, str]  # (namespace, name)
Address = tuple[str, int, str]  # (ip, port, protocol): what the datapath looks a frontend up by


@dataclass(frozen=True)
class FrontendInfo:
    """What a flow or a reader needs to know of a frontend id (rev_nat_index)."""

    service: str  # namespace/name
    frontend: str  # ip:port/PROTO
    kind: str
    port_name: str


class LbQueries(Protocol):
    """Read-only view of the load balancer (copies): membranectl, flows, metrics."""

    def service_rows(self) -> list[dict[str, Any]]: ...

    def frontend_info(self, rev_nat_index: int) -> FrontendInfo | None: ...

    def summary(self) -> dict[str, int]: ...


def _ref(key: str) -> ServiceRef:
    namespace, _, name = key.partition("/")
    return (namespace, name)


class LbManager:
    """Desired lb4 map contents, kept incrementally per service; written through a MapManager."""

    def __init__(self, port: MapPort, node_name: str,
                 node_addresses: Callable[[], Iterable[str]] = lambda: (),
                 complete: Callable[[], bool] = lambda: True, maglev_size: int = DEFAULT_MAGLEV_SIZE,
                 on_health: Callable[[dict[int, HealthCheck]], None] | None = None) -> None:
        self.port = port
        # Whether the records held are a complete state (the consumer synced: a snapshot, or a
        # restored one). Until then nothing is written: the pinned maps keep serving what they
        # hold, rather than a partial table (or an empty one) replacing them.
        self.complete = complete
        self.node_name = node_name
        self.node_addresses = node_addresses
        self.maglev_size = maglev_size  # entries of each per-packet frontend's Maglev table (a prime)
        # healthCheckNodePort -> its answer on this node, given to on_health after an apply that
        # changed any (the health check server follows it).
        self.on_health = on_health
        self.health: dict[int, HealthCheck] = {}
        self.maps = MapManager(LbMapPort(port), LB_ROLES, order=LB_ORDER)
        self.ids = LbIds()
        self.lock = threading.Lock()  # this manager's: readers take it briefly for copies
        self.services: dict[ServiceRef, ServiceState] = {}
        self.slices: dict[ServiceRef, dict[str, EndpointSliceState]] = {}
        self.slice_owner: dict[str, ServiceRef] = {}
        self.dirty: set[ServiceRef] = set()
        self.per_service: dict[ServiceRef, dict[Address, ServiceFrontend]] = {}
        self.claims: dict[Address, set[ServiceRef]] = {}
        self.table: dict[Address, ServiceFrontend] = {}  # the owner of each address
        self.entries: dict[Address, FrontendEntries] = {}
        self.by_index: dict[int, FrontendInfo] = {}
        self.backend_users: dict[int, int] = {}
        self.node_addrs: tuple[str, ...] = ()  # as last read (only while a NodePort service is held)
        # Services with a node port: the only frontends that depend on the node's addresses.
        # With none held, `apply` reads no addresses (a netlink dump per apply otherwise).
        self.node_port_services: set[ServiceRef] = set()
        self.seeded = False
        self.refused = 0
        # Called after an apply with the UDP backends (address, port) that left a frontend: the
        # agent closes connected sockets the hooks sent there (agent/sock_terminating.py).
        self.on_udp_backends_removed: Callable[[list[tuple[IPv4Address, int]]], None] = lambda gone: None
        self._removed: set[tuple[IPv4Address, int]] = set()

    # --- records -------------------------------------------------------------------------------
    def on_update(self, kind: Kind, key: str, obj: StateObject | None) -> None:
        with self.lock:
            if kind is Kind.SERVICE:
                ref = _ref(key)
                if isinstance(obj, ServiceState):
                    self.services[ref] = obj
                else:
                    self.services.pop(ref, None)
                if isinstance(obj, ServiceState) and any(p.node_port for p in obj.ports):
                    self.node_port_services.add(ref)
                else:
                    self.node_port_services.discard(ref)
                self.dirty.add(ref)
            elif kind is Kind.ENDPOINTSLICE:
                old = self.slice_owner.pop(key, None)
                if old is not None:
                    self.slices.get(old, {}).pop(key, None)
                    self.dirty.add(old)
                if isinstance(obj, EndpointSliceState) and obj.service:
                    owner = (obj.namespace, obj.service)
                    self.slice_owner[key] = owner
                    self.slices.setdefault(owner, {})[key] = obj
                    self.dirty.add(owner)

    # --- writing -------------------------------------------------------------------------------
    def apply(self) -> dict[str, int]:
        """Write what changed since the last apply; returns entries written per map.
        MapCapacityError: nothing written, retried at the next apply."""
        if not self.complete():
            return {}
        if not self.seeded:
            self._seed()
        with self.lock:
            changed = bool(self.dirty)
            self._settle()
            self._check_capacity()
        written = self.maps.apply()
        if self._removed:
            gone, self._removed = sorted(self._removed), set()
            try:
                self.on_udp_backends_removed(gone)
            except OSError as exc:  # best effort: the maps are right, sockets are the application's
                log.warning("closing UDP sockets of removed backends failed", extra={"fields": {"error": str(exc)}})
        if changed and self.on_health is not None:
            self._report_health()
        return {role: len(d.upserts) + len(d.deletes) for role, d in written.items() if d}

    def resync(self) -> dict[str, int]:
        """Read the kernel maps back (drift is rewritten by the next apply) and apply."""
        if not self.complete():
            return {}
        self._seed()
        drift = self.maps.resync()
        self.apply()
        return {f"repaired_{role}": count for role, count in drift.items() if count}

    def _seed(self) -> None:
        """Ids from the pinned maps: what a restarted agent finds there keeps its numbers."""
        if self.seeded:
            return
        port = self.maps.port
        rev_nat, backends = port.read_map("lb_rev_nat"), port.read_map("lb_backends")
        with self.lock:
            self.ids.seed(rev_nat, backends)
        self.maps.resync()
        self.seeded = True
        if rev_nat:
            log.info("service maps found pinned", extra={"fields": {"frontends": len(rev_nat),
                                                                    "backends": len(backends)}})

    def _check_capacity(self) -> None:
        """Slots and masters share one kernel map: check their combined peak."""
        pending = self.maps.pending()
        written = self.maps.written
        current = len(written["lb_slots"]) + len(written["lb_masters"])
        added = sum(1 for role in ("lb_slots", "lb_masters") for key in pending[role].upserts
                    if key not in written[role])
        capacity = self.port.capacity("lb_services")
        if capacity is not None and added and current + added > capacity:
            self.refused += 1
            raise MapCapacityError("lb_services", current + added, capacity, current)

    def _settle(self) -> None:
        if self.node_port_services:  # read at every apply while they exist: never stale
            addrs = tuple(dict.fromkeys(self.node_addresses()))
            if addrs != self.node_addrs:
                self.node_addrs = addrs
                self.dirty.update(self.node_port_services)
        addrs = self.node_addrs  # else no frontend uses them: nothing read
        touched: set[Address] = set()
        for ref in self.dirty:
            service = self.services.get(ref)
            new: dict[Address, ServiceFrontend] = {}
            if service is not None:
                slices = sorted(self.slices.get(ref, {}).values(), key=lambda s: s.name)
                for entry in service_frontends(service, slices, self.node_name, addrs):
                    where = entry.frontend.address
                    held = new.get(where)
                    if held is None or _KIND_RANK[entry.frontend.kind] < _KIND_RANK[held.frontend.kind]:
                        new[where] = entry
            old = self.per_service.pop(ref, {})
            if new:
                self.per_service[ref] = new
            for where in old.keys() - new.keys():
                self.claims.get(where, set()).discard(ref)
            for where in new:
                self.claims.setdefault(where, set()).add(ref)
            touched.update(where for where in old.keys() | new.keys() if old.get(where) != new.get(where))
        self.dirty.clear()
        for where in touched:
            claimants = self.claims.get(where)
            winner = None
            if claimants:
                owner = min(claimants, key=lambda r: (_KIND_RANK[self.per_service[r][where].frontend.kind], r))
                winner = self.per_service[owner][where]
            else:
                self.claims.pop(where, None)
            if winner != self.table.get(where):
                self._rewrite(where, winner)

    def _rewrite(self, where: Address, winner: ServiceFrontend | None) -> None:
        maps = self.maps
        old = self.entries.pop(where, None)
        new = frontend_entries(winner, self.ids, self.node_name, self.maglev_size) if winner is not None else None
        if winner is None:
            self.table.pop(where, None)
        else:
            self.table[where] = winner
        if new is not None:
            self.entries[where] = new
            for backend_id, backend in new.backends.items():
                self.backend_users[backend_id] = self.backend_users.get(backend_id, 0) + 1
                maps.set("lb_backends", backend_id, backend)
            maps.set("lb_rev_nat", new.rev_nat_index, new.front)
            for role, contents in (("lb_members", new.members), ("lb_slots", new.slots), ("lb_maglev", new.maglev),
                                   ("lb_masters", new.masters)):
                for key, value in contents.items():
                    maps.set(role, key, value)
            assert winner is not None
            self.by_index[new.rev_nat_index] = FrontendInfo(winner.service, str(winner.frontend),
                                                            winner.frontend.kind, winner.port_name)
        if old is None:
            return
        for role, old_keys, new_keys in (("lb_members", old.members, new.members if new else {}),
                                         ("lb_slots", old.slots, new.slots if new else {}),
                                         ("lb_maglev", old.maglev, new.maglev if new else {}),
                                         ("lb_masters", old.masters, new.masters if new else {})):
            for key in old_keys.keys() - new_keys.keys():
                maps.remove(role, key)
        kept = {(b.address, b.port) for b in new.backends.values()} if new is not None else set()
        self._removed.update((b.address, b.port) for b in old.backends.values()
                             if b.protocol == 17 and (b.address, b.port) not in kept)
        for backend_id, backend in old.backends.items():
            users = self.backend_users.get(backend_id, 0) - 1
            if users > 0:
                self.backend_users[backend_id] = users
                continue
            self.backend_users.pop(backend_id, None)
            maps.remove("lb_backends", backend_id)
            self.ids.backends.release(backend.ident)
        if new is None:
            maps.remove("lb_rev_nat", old.rev_nat_index)
            self.ids.frontends.release(old.front)
            self.by_index.pop(old.rev_nat_index, None)

    def _report_health(self) -> None:
        with self.lock:
            services = [svc for svc in self.services.values() if svc.health_check_node_port]
            slices = [sl for svc in services for sl in self.slices.get((svc.namespace, svc.name), {}).values()]
            checks = health_checks(services, slices, self.node_name)
        if checks != self.health:
            self.health = checks
            assert self.on_health is not None
            self.on_health(dict(checks))

    # --- reading (LbQueries) ------------------------------------------------------------------
    def frontend_info(self, rev_nat_index: int) -> FrontendInfo | None:
        with self.lock:
            return self.by_index.get(rev_nat_index)

    def service_rows(self) -> list[dict[str, Any]]:
        """One row per frontend: service, type, frontend, the backends with their state."""
        with self.lock:
            rows = []
            for where, entry in sorted(self.table.items()):
                service = self.services.get((entry.namespace, entry.name))
                entries = self.entries.get(where)
                rows.append({
                    "service": entry.service, "type": service.type if service else "",
                    "frontend": str(entry.frontend), "kind": entry.frontend.kind, "port_name": entry.port_name,
                    "id": entries.rev_nat_index if entries else None,
                    "affinity_timeout": entry.affinity_timeout,
                    "backends": [{"address": b.key, "state": b.state, "node": b.node} for b in entry.backends],
                    "datapath": entries is not None,  # False: IPv6 or SCTP, not in the maps
                })
            return rows

    def summary(self) -> dict[str, int]:
        with self.lock:
            return {"services": len(self.per_service), "frontends": len(self.table),
                    "backends": len(self.backend_users),
                    "frontends_without_backend": sum(1 for e in self.entries.values() if not e.slots)}

    def desired(self) -> Mapping[str, Mapping[Any, Any]]:
        """The desired contents per role (tests compare them with the kernel and the oracle)."""
        return self.maps.desired


def protocol_name(number: int) -> str:
    return PROTOCOL_NAMES.get(number, str(number))
