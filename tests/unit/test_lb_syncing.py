"""The load-balancer manager (agent/lb_syncing.py): incremental per service, checked against the
whole-table oracle (membrane.services.service_table + membrane.lb_maps.desired_contents) on
random record sequences; restart rebuilds identical contents; capacity refusals write nothing."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from membrane.agent.lb_syncing import LbManager
from membrane.agent.map_managing import MapCapacityError
from membrane.api.state_objects import (
    EndpointPortState,
    EndpointSliceState,
    Kind,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
)
from membrane.lb_maps import desired_contents
from membrane.services import service_table

NODE = "n1"


class FakeLbMaps:
    """The kernel's lb maps (lb_services holds slots and masters)."""

    def __init__(self, capacity: int | None = None) -> None:
        self.tables: dict[str, dict[Any, Any]] = {r: {} for r in ("lb_services", "lb_backends", "lb_rev_nat",
                                                                   "lb_members", "lb_maglev")}
        self.cap = capacity
        self.writes = 0

    def capacity(self, role: str) -> int | None:
        return self.cap if role == "lb_services" else None

    def read_map(self, role: str) -> dict[Any, Any]:
        return dict(self.tables[role])

    def update_map(self, role: str, entries: Mapping[Any, Any]) -> None:
        self.tables[role].update(entries)
        self.writes += len(entries)

    def delete_map(self, role: str, keys: Sequence[Any]) -> int:
        self.writes += len(keys)
        return sum(self.tables[role].pop(k, None) is not None for k in keys)


def _normalised(maps: Mapping[str, Mapping[Any, Any]]) -> dict[str, Any]:
    """Contents with ids replaced by what they stand for (two runs allocate different numbers)."""
    backends, fronts = maps["lb_backends"], maps["lb_rev_nat"]
    masters = maps["lb_masters"] if "lb_masters" in maps else {k: v for k, v in maps["lb_services"].items()
                                                                  if not k.slot}
    slots = maps["lb_slots"] if "lb_slots" in maps else {k: v for k, v in maps["lb_services"].items() if k.slot}
    out = {}
    for key, master in masters.items():
        assert fronts[master.rev_nat_index] == (key.address, key.port, key.protocol) or \
            (fronts[master.rev_nat_index].address, fronts[master.rev_nat_index].port) == (key.address, key.port)
        chosen = [backends[slots[type(key)(key.address, key.port, key.protocol, s, key.scope)].backend_id]
                  for s in range(1, master.count + 1)]
        out[(key.address, key.port, key.protocol)] = (master.count, master.flags, master.affinity_timeout_s,
                                                       tuple(chosen))
    members = {(backends[m.backend_id].ident, (fronts[m.rev_nat_index].address, fronts[m.rev_nat_index].port,
                                                fronts[m.rev_nat_index].protocol)) for m in maps["lb_members"]}
    maglev: dict[Any, dict[int, Any]] = {}
    for mkey, backend_id in maps.get("lb_maglev", {}).items():
        maglev.setdefault(fronts[mkey.rev_nat_index], {})[mkey.index] = backends[backend_id].ident
    return {"frontends": out, "members": members, "backends": set(backends.values()),
            "fronts": set(fronts.values()), "maglev": maglev}


def _service(rng: random.Random, i: int) -> ServiceState:
    ports = tuple(ServicePortState(name, proto, port, node_port=30000 + i if kind else 0)
                  for name, proto, port in rng.sample([("http", "TCP", 80), ("dns", "UDP", 53), ("dnstcp", "TCP", 53),
                                                       ("alt", "TCP", 8080)], rng.randint(1, 3))
                  for kind in [rng.random() < 0.2])
    return ServiceState("ns", f"s{i}", rng.choice(["ClusterIP", "ClusterIP", "NodePort"]),
                        (f"10.96.0.{rng.randint(1, 6)}",), ports,
                        external_ips=(f"10.97.0.{rng.randint(1, 3)}",) if rng.random() < 0.2 else (),
                        affinity_timeout=rng.choice([0, 0, 30]), internal_traffic_local=rng.random() < 0.2)


def _slice(rng: random.Random, i: int, j: int) -> EndpointSliceState:
    ports = tuple(EndpointPortState(name, proto, rng.choice([80, 8080, 5353]))
                  for name, proto in [("http", "TCP"), ("dns", "UDP"), ("dnstcp", "TCP"), ("alt", "TCP")])
    endpoints = tuple(SliceEndpointState((f"10.1.{j}.{rng.randint(1, 9)}",), ready=rng.random() < 0.7,
                                         serving=rng.random() < 0.8, terminating=rng.random() < 0.3,
                                         node_name=rng.choice([NODE, "n2"]))
                      for _ in range(rng.randint(0, 4)))
    return EndpointSliceState("ns", f"s{i}-{j}", f"s{i}", "IPv4", ports, endpoints)


def test_incremental_matches_the_whole_table_oracle() -> None:
    rng = random.Random(5)
    for _ in range(12):
        maps = FakeLbMaps()
        manager = LbManager(maps, NODE, lambda: ("192.168.1.10",))
        services: dict[str, ServiceState] = {}
        slices: dict[str, EndpointSliceState] = {}
        for _ in range(25):
            for _ in range(rng.randint(1, 4)):
                i = rng.randint(0, 7)
                if rng.random() < 0.5:
                    svc = _service(rng, i) if rng.random() < 0.85 else None
                    if svc is None:
                        services.pop(f"ns/s{i}", None)
                    else:
                        services[svc.key] = svc
                    manager.on_update(Kind.SERVICE, f"ns/s{i}", svc)
                else:
                    sl = _slice(rng, i, rng.randint(0, 1)) if rng.random() < 0.85 else None
                    key = sl.key if sl else f"ns/s{i}-0"
                    if sl is None:
                        slices.pop(key, None)
                    else:
                        slices[key] = sl
                    manager.on_update(Kind.ENDPOINTSLICE, key, sl)
            manager.apply()
            table = service_table(services.values(), slices.values(), NODE, ("192.168.1.10",))
            oracle = desired_contents(table.values(), NODE)
            assert _normalised(manager.desired()) == _normalised(oracle)
            assert _normalised(maps.tables) == _normalised(oracle)  # what was written is it too


def _small() -> tuple[ServiceState, EndpointSliceState]:
    svc = ServiceState("ns", "web", "ClusterIP", ("10.96.0.10",), (ServicePortState("http", "TCP", 80),))
    sl = EndpointSliceState("ns", "web-a", "web", "IPv4", (EndpointPortState("http", "TCP", 8080),),
                            tuple(SliceEndpointState((f"10.1.0.{i}",), node_name=NODE) for i in (1, 2, 3)))
    return svc, sl


def test_a_restarted_manager_writes_nothing() -> None:
    maps = FakeLbMaps()
    first = LbManager(maps, NODE)
    svc, sl = _small()
    first.on_update(Kind.SERVICE, svc.key, svc)
    first.on_update(Kind.ENDPOINTSLICE, sl.key, sl)
    first.apply()
    before = {role: dict(t) for role, t in maps.tables.items()}
    writes = maps.writes
    second = LbManager(maps, NODE)  # records restored in another order, ids read from the maps
    second.on_update(Kind.ENDPOINTSLICE, sl.key, sl)
    second.on_update(Kind.SERVICE, svc.key, svc)
    second.apply()
    assert maps.writes == writes and maps.tables == before


def test_capacity_refusal_writes_nothing_and_is_retried() -> None:
    maps = FakeLbMaps(capacity=3)
    manager = LbManager(maps, NODE)
    svc, sl = _small()  # 1 master + 3 slots = 4 entries > 3
    manager.on_update(Kind.SERVICE, svc.key, svc)
    manager.on_update(Kind.ENDPOINTSLICE, sl.key, sl)
    with pytest.raises(MapCapacityError):
        manager.apply()
    assert maps.writes == 0
    maps.cap = 10
    manager.apply()
    assert len(maps.tables["lb_services"]) == 4


def test_queries() -> None:
    manager = LbManager(FakeLbMaps(), NODE)
    svc, sl = _small()
    manager.on_update(Kind.SERVICE, svc.key, svc)
    manager.on_update(Kind.ENDPOINTSLICE, sl.key, sl)
    manager.apply()
    (row,) = manager.service_rows()
    assert row["service"] == "ns/web" and row["frontend"] == "10.96.0.10:80/TCP" and row["type"] == "ClusterIP"
    assert [b["address"] for b in row["backends"]] == ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"]
    info = manager.frontend_info(row["id"])
    assert info is not None and info.service == "ns/web"
    assert manager.summary() == {"services": 1, "frontends": 1, "backends": 3, "frontends_without_backend": 0}


def test_node_addresses_followed_and_read_only_for_node_ports() -> None:
    """NodePort frontends follow the node's addresses at every apply (also one that changed no
    record), checked against the oracle; with no NodePort service held, no address is read."""
    rng = random.Random(11)
    addresses: list[tuple[str, ...]] = [("192.168.1.10",)]
    reads: list[int] = []

    def node_addresses() -> tuple[str, ...]:
        reads.append(1)
        return addresses[0]

    maps = FakeLbMaps()
    manager = LbManager(maps, NODE, node_addresses)
    svc, sl = _small()
    manager.on_update(Kind.SERVICE, svc.key, svc)
    manager.on_update(Kind.ENDPOINTSLICE, sl.key, sl)
    manager.apply()
    manager.apply()
    assert reads == []  # only a ClusterIP service: its frontends do not depend on the addresses
    services: dict[str, ServiceState] = {svc.key: svc}
    slices: dict[str, EndpointSliceState] = {sl.key: sl}
    for step in range(40):
        if step % 3 == 0:  # records change (NodePort services come and go)
            i = rng.randint(0, 5)
            new = _service(rng, i)
            if rng.random() < 0.3:
                services.pop(f"ns/s{i}", None)
                manager.on_update(Kind.SERVICE, f"ns/s{i}", None)
            else:
                services[new.key] = new
                manager.on_update(Kind.SERVICE, new.key, new)
                one = _slice(rng, i, 0)
                slices[one.key] = one
                manager.on_update(Kind.ENDPOINTSLICE, one.key, one)
        else:  # only the node's addresses move: an apply that changed no record
            addresses[0] = tuple(rng.sample(["192.168.1.10", "192.168.1.11", "10.0.5.1"], rng.randint(1, 3)))
        before = len(reads)
        manager.apply()
        node_ports = any(p.node_port for s in services.values() for p in s.ports)
        assert len(reads) - before == (1 if node_ports else 0)
        table = service_table(services.values(), slices.values(), NODE, addresses[0])
        oracle = desired_contents(table.values(), NODE)
        assert _normalised(maps.tables) == _normalised(oracle)
    assert any(p.node_port for s in services.values() for p in s.ports)  # the seed exercised NodePorts
