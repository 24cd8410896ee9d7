"""Map entry counts for the metrics scrape: batched or key-walk counts agree with full dumps."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from membrane.agent.datapath import EndpointEntry
from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.policy import FlatKey, FlatValue, Verdict


def test_counts_match_dumps(datapath: Any) -> None:
    before = datapath.map_entry_counts()
    assert set(before) == {"endpoints", "conntrack", "ipcache", "policy", "cidr", "metrics", "lb_services",
                           "lb_backends", "lb_affinity", "lb_sock"}
    added = []
    try:
        for i in range(300):  # more than one batch bucket, fewer than a chunk
            ip = IPv4Address(f"10.250.{i // 200}.{i % 200 + 1}")
            datapath.update_map("endpoints", {ip: EndpointEntry(ifindex=1000 + i, endpoint_id=500 + i, identity=1000 + i,
                                                       pod_mac="02:aa:00:00:00:01", host_mac="02:ee:00:00:00:01")})
            datapath.update_map("ipcache", {IPv4Network(f"{ip}/32"): IpcacheEntry(1000 + i)})
            added.append(ip)
        for port in range(1, 41):
            datapath.update_map("policy", {FlatKey(500, 0, 1, 6, port, 16): FlatValue(int(Verdict.DENY), 7)})
        counts = datapath.map_entry_counts()
        assert counts["endpoints"] == (len(datapath.endpoints()), 4096)
        assert counts["ipcache"][0] == len(datapath.ipcache())
        assert counts["policy"][0] == len(datapath.policy())
        assert counts["conntrack"][0] == len(datapath.conntrack())
        assert counts["endpoints"][0] - before["endpoints"][0] == 300
        assert counts["policy"][0] - before["policy"][0] == 40
    finally:
        for ip in added:
            datapath.delete_map("endpoints", [ip])
            datapath.delete_map("ipcache", [IPv4Network(f"{ip}/32")])
        for port in range(1, 41):
            datapath.delete_map("policy", [FlatKey(500, 0, 1, 6, port, 16)])


def test_batched_and_per_element_writes_land_exactly(datapath: Any) -> None:
    """pinned_maps: the endpoints hash map takes BPF_MAP_UPDATE_BATCH / DELETE_BATCH (one
    syscall per chunk); the LPM tries too where the kernel has batch ops for them, else (forced
    here on the CIDR map) element by element. All read back exactly, and a batch delete of
    keys partly gone still deletes the rest."""
    endpoints = {IPv4Address(f"10.251.{i // 200}.{i % 200 + 1}"): EndpointEntry(
        ifindex=2000 + i, endpoint_id=900 + i, identity=3000 + i, pod_mac="02:aa:00:00:00:02",
        host_mac="02:ee:00:00:00:02") for i in range(500)}
    ipcache = {IPv4Network(f"{ip}/32"): IpcacheEntry(3000 + i) for i, ip in enumerate(endpoints)}
    before_eps, before_ipc = datapath.endpoints(), datapath.ipcache()
    try:
        datapath.update_map("endpoints", endpoints)
        datapath.update_map("ipcache", ipcache)
        assert datapath.pinned_map("endpoints").batched is True
        assert datapath.pinned_map("ipcache").batched in (True, False)  # learnt: kernel dependent
        assert datapath.endpoints() == {**before_eps, **endpoints}
        assert datapath.ipcache() == {**before_ipc, **ipcache}
        changed = {ip: EndpointEntry(1, 1, 1, "02:aa:00:00:00:03", "02:ee:00:00:00:03") for ip in list(endpoints)[:10]}
        datapath.update_map("endpoints", changed)  # a batch update overwrites
        assert all(datapath.endpoints()[ip] == entry for ip, entry in changed.items())
        gone = list(endpoints)[:5]
        assert datapath.delete_map("endpoints", gone) == 5
        assert datapath.delete_map("endpoints", list(endpoints)) >= 490  # the first 5 already gone
        assert datapath.delete_map("ipcache", list(ipcache)) == 500
        assert datapath.endpoints() == before_eps and datapath.ipcache() == before_ipc
    finally:
        datapath.delete_map("endpoints", list(endpoints))
        datapath.delete_map("ipcache", list(ipcache))


def test_per_element_fallback_writes_in_order(datapath: Any) -> None:
    cidr = datapath.pinned_map("cidr")
    before, learnt = datapath.cidrs(), cidr.batched
    prefixes = {IPv4Network(f"10.252.{i}.0/24"): (1 << 24) + 100 + i for i in range(50)}
    cidr.batched = False  # what a kernel without LPM batch ops gives
    try:
        datapath.update_map("cidr", prefixes)
        assert datapath.cidrs() == {**before, **prefixes}
        assert datapath.delete_map("cidr", [*prefixes, IPv4Network("10.253.0.0/16")]) == 50  # one never there
        assert datapath.cidrs() == before
    finally:
        datapath.delete_map("cidr", list(prefixes))
        cidr.batched = learnt


def test_map_manager_on_kernel_maps_writes_differences_and_repairs_drift(datapath: Any) -> None:
    """The generic map manager over the real pinned maps: a resync after edits behind its back
    counts each drifted entry and the next apply puts the kernel maps back."""
    from membrane.agent.map_managing import MapManager

    mgr = MapManager(datapath, ("ipcache", "cidr"))
    assert mgr.resync() == {"ipcache": 0, "cidr": 0}  # first read: what is there is no drift
    before_ipc, before_cidr = datapath.ipcache(), datapath.cidrs()
    ipcache = {IPv4Network(f"10.254.0.{i}/32"): IpcacheEntry(4000 + i) for i in range(1, 30)}
    cidrs = {IPv4Network("10.254.0.0/24"): (1 << 24) + 77, IPv4Network("10.254.0.0/28"): (1 << 24) + 78}
    try:
        mgr.replace("ipcache", {**before_ipc, **ipcache})
        mgr.replace("cidr", {**before_cidr, **cidrs})
        written = mgr.apply()
        assert len(written["ipcache"].upserts) == 29 and not written["ipcache"].deletes
        assert datapath.ipcache() == {**before_ipc, **ipcache} and datapath.cidrs() == {**before_cidr, **cidrs}
        first = next(iter(ipcache))
        datapath.delete_map("ipcache", [first])  # lost
        datapath.update_map("cidr", {IPv4Network("10.254.0.0/28"): (1 << 24) + 99})  # changed
        datapath.update_map("cidr", {IPv4Network("10.254.1.0/24"): (1 << 24) + 98})  # added
        assert mgr.resync() == {"ipcache": 1, "cidr": 2} and mgr.repairs == {"ipcache": 1, "cidr": 2}
        written = mgr.apply()
        assert set(written["ipcache"].upserts) == {first} and written["cidr"].deletes == [IPv4Network("10.254.1.0/24")]
        assert datapath.ipcache() == {**before_ipc, **ipcache} and datapath.cidrs() == {**before_cidr, **cidrs}
    finally:
        mgr.replace("ipcache", before_ipc)
        mgr.replace("cidr", before_cidr)
        mgr.apply()
        datapath.delete_map("cidr", [IPv4Network("10.254.1.0/24")])
    assert datapath.ipcache() == before_ipc and datapath.cidrs() == before_cidr
