"""Map entry counts for the metrics scrape: batched or key-walk counts agree with full dumps."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

from membrane.agent.datapath import EndpointEntry
from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.policy import FlatKey, FlatValue, Verdict


def test_counts_match_dumps(datapath: Any) -> None:
    before = datapath.map_entry_counts()
    assert set(before) == {"endpoints", "conntrack", "ipcache", "policy", "cidr", "metrics"}
    added = []
    try:
        for i in range(300):  # more than one batch bucket, fewer than a chunk
            ip = IPv4Address(f"10.250.{i // 200}.{i % 200 + 1}")
            datapath.upsert_endpoint(ip, EndpointEntry(ifindex=1000 + i, endpoint_id=500 + i, identity=1000 + i,
                                                       pod_mac="02:aa:00:00:00:01", host_mac="02:ee:00:00:00:01"))
            datapath.upsert_ipcache(IPv4Network(f"{ip}/32"), IpcacheEntry(1000 + i))
            added.append(ip)
        for port in range(1, 41):
            datapath.upsert_policy(FlatKey(500, 0, 1, 6, port, 16), FlatValue(int(Verdict.DENY), 7))
        counts = datapath.map_entry_counts()
        assert counts["endpoints"] == (len(datapath.endpoints()), 4096)
        assert counts["ipcache"][0] == len(datapath.ipcache())
        assert counts["policy"][0] == len(datapath.policy())
        assert counts["conntrack"][0] == len(datapath.conntrack())
        assert counts["endpoints"][0] - before["endpoints"][0] == 300
        assert counts["policy"][0] - before["policy"][0] == 40
    finally:
        for ip in added:
            datapath.delete_endpoint(ip)
            datapath.delete_ipcache(IPv4Network(f"{ip}/32"))
        for port in range(1, 41):
            datapath.delete_policy(FlatKey(500, 0, 1, 6, port, 16))
