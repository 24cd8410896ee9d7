"""The generic map manager: desired vs written per map, differences only, plan order, resync."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from ipaddress import IPv4Network
from typing import Any

import pytest

from membrane.agent.map_managing import MapCapacityError, MapManager
from membrane.delta import Delta
from membrane_testkit.fake_maps import FakePolicyMaps

A, B, C = (IPv4Network(p) for p in ("10.0.0.1/32", "10.0.0.0/24", "10.1.0.0/16"))


def manager() -> tuple[MapManager, FakePolicyMaps, list[Mapping[Any, Any]]]:
    maps = FakePolicyMaps()
    steps: list[Mapping[Any, Any]] = []
    return MapManager(maps, ("policy", "ipcache", "cidr"), steps={"endpoint_identity": steps.append}), maps, steps


def test_only_differences_are_written_in_plan_order() -> None:
    mgr, maps, steps = manager()
    mgr.set("ipcache", A, 1000)
    mgr.set("ipcache", B, 2000)
    mgr.set("cidr", B, 2000)
    written = mgr.apply({"endpoint_identity": Delta({"c1/eth0": 1000}, [])})
    assert maps.ipcache == {A: 1000, B: 2000} and maps.cidrs == {B: 2000}
    assert written["ipcache"].upserts == {A: 1000, B: 2000} and steps == [{"c1/eth0": 1000}]
    assert maps.log == ["ipcache+2-0", "cidr+1-0"]
    maps.log.clear()
    # Re-stating the same contents writes nothing; a change writes just that key.
    mgr.set("ipcache", A, 1000)
    mgr.set("ipcache", B, 2001)
    mgr.remove("cidr", B)
    mgr.remove("cidr", C)  # never there: nothing to delete
    written = mgr.apply()
    assert maps.log == ["ipcache+1-0", "cidr+0-1"] and written["ipcache"].upserts == {B: 2001}
    assert mgr.written == {"policy": {}, "ipcache": {A: 1000, B: 2001}, "cidr": {}}
    maps.log.clear()
    assert not any(mgr.apply().values()) and maps.log == []


def test_replace_deletes_what_the_new_contents_lack() -> None:
    mgr, maps, _ = manager()
    mgr.replace("cidr", {A: 1, B: 2})
    mgr.apply()
    mgr.replace("cidr", {B: 3, C: 4})
    mgr.apply()
    assert maps.cidrs == {B: 3, C: 4} and maps.log[-2:] == ["cidr+2-0", "cidr+0-1"]


def test_a_change_beyond_capacity_writes_nothing_and_can_be_discarded() -> None:
    mgr, maps, _ = manager()
    maps.capacities["ipcache"] = 2
    mgr.replace("ipcache", {A: 1, B: 2})
    mgr.apply()
    mgr.set("ipcache", C, 3)  # a third key: the peak (before any delete) is 3 > 2
    mgr.remove("ipcache", A)
    with pytest.raises(MapCapacityError, match="ipcache map would need 3 entries"):
        mgr.apply()
    assert maps.ipcache == {A: 1, B: 2}
    mgr.discard()
    assert mgr.desired["ipcache"] == {A: 1, B: 2} and not any(mgr.pending().values())


def test_resync_counts_and_repairs_drift_but_not_at_the_first_read() -> None:
    maps = FakePolicyMaps()
    maps.ipcache.update({A: 1, B: 2})  # what a restarted agent finds
    mgr = MapManager(maps, ("policy", "ipcache", "cidr"))
    assert mgr.resync() == {"policy": 0, "ipcache": 0, "cidr": 0}
    mgr.replace("ipcache", {A: 1, B: 2})
    mgr.apply()
    assert maps.writes == 0  # what the kernel holds already is not rewritten
    maps.ipcache[A] = 66  # edited behind our back
    del maps.ipcache[B]  # and lost
    maps.ipcache[C] = 3  # and added
    assert mgr.resync()["ipcache"] == 3 and mgr.repairs["ipcache"] == 3
    mgr.apply()
    assert maps.ipcache == {A: 1, B: 2}


class BatchPort:
    """Counts calls: one update and one delete per batch, never one per element."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []

    def capacity(self, role: str) -> int | None:
        return None

    def read_map(self, role: str) -> dict[Any, Any]:
        return {}

    def update_map(self, role: str, entries: Mapping[Any, Any]) -> None:
        self.calls.append((role, "update", len(entries)))

    def delete_map(self, role: str, keys: Sequence[Any]) -> int:
        self.calls.append((role, "delete", len(keys)))
        return len(keys)


def test_each_batch_is_one_port_call() -> None:
    port = BatchPort()
    mgr = MapManager(port, ("ipcache",))
    mgr.replace("ipcache", {IPv4Network(f"10.0.{i // 256}.{i % 256}/32"): 5 for i in range(1000)})
    mgr.apply()
    mgr.replace("ipcache", {})
    mgr.apply()
    assert port.calls == [("ipcache", "update", 1000), ("ipcache", "delete", 1000)]
