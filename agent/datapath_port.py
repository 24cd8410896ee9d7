"""The agent's view of the datapath: endpoint map deltas, program fds, counters and dumps.

Wraps `datapath.Datapath` (the bcc adapter) with the shapes the endpoint manager, the
metrics exporter and membranectl use, so none of them needs to know about ctypes.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from membrane.delta import Delta
from membrane.policy import FlatKey, FlatValue

from .policy_syncing import IpcacheTarget

from .datapath import Datapath, EndpointEntry
from .datapath.ipcache import IpcacheEntry
from .datapath.node_config import NodeConfig
from .datapath.layout import CONNTRACK, ENDPOINTS

PROGRAMS = ("from_container", "to_container")


class DatapathPort:
    def __init__(self, pin_root: Path) -> None:
        self.dp = Datapath(pin_root)
        self.compile_seconds = 0.0
        self.load_seconds = 0.0

    def load(self) -> None:
        self.dp.load()
        self.compile_seconds = self.dp.compile_seconds or 0.0
        self.load_seconds = self.dp.load_seconds or 0.0

    def close(self) -> None:
        self.dp.close()

    def programs(self) -> tuple[tuple[int, str], tuple[int, str]]:
        ingress, egress = ((self.dp.program_fd(name), name) for name in PROGRAMS)
        return ingress, egress

    def program(self, name: str) -> tuple[int, str]:
        """(fd, name) of one program, e.g. "from_overlay" for the tunnel device."""
        return self.dp.program_fd(name), name

    def set_node_config(self, config: NodeConfig) -> None:
        self.dp.set_node_config(config)

    def read_endpoints(self) -> dict[IPv4Address, EndpointEntry]:
        return self.dp.endpoints()

    def write_endpoints(self, delta: Delta[IPv4Address, EndpointEntry]) -> None:
        # Upserts first: a moved address is never briefly absent.
        for ip, entry in delta.upserts.items():
            self.dp.upsert_endpoint(ip, entry)
        for ip in delta.deletes:
            self.dp.delete_endpoint(ip)

    def read_policy(self) -> dict[FlatKey, FlatValue]:
        return self.dp.policy()

    def write_policy(self, delta: Delta[FlatKey, FlatValue]) -> None:
        self.dp.apply_policy(delta)

    def read_ipcache(self) -> dict[IPv4Network, IpcacheTarget]:
        """The identity of each prefix, or the full entry when it sits behind a tunnel endpoint."""
        return {prefix: entry if entry.tunnel_endpoint is not None else entry.identity
                for prefix, entry in self.dp.ipcache().items()}

    def write_ipcache(self, delta: Delta[IPv4Network, IpcacheTarget]) -> None:
        upserts = {p: v if isinstance(v, IpcacheEntry) else IpcacheEntry(v) for p, v in delta.upserts.items()}
        self.dp.apply_ipcache(Delta(upserts, list(delta.deletes)))

    def counters(self) -> list[tuple[str, str, int, int]]:
        return [(s.reason.lower(), s.direction.lower(), s.packets, s.bytes) for s in self.dp.metrics()]

    def conntrack_gc(self) -> int:
        return self.dp.conntrack_gc()

    def map_usage(self) -> dict[str, tuple[int, int]]:
        return {ENDPOINTS.role: (len(self.dp.endpoints()), ENDPOINTS.max_entries),
                CONNTRACK.role: (len(self.dp.conntrack()), CONNTRACK.max_entries)}

    def dump_endpoints(self) -> list[dict[str, Any]]:
        return [{"ip": str(ip), **entry.to_json()} for ip, entry in sorted(self.dp.endpoints().items())]

    def dump_conntrack(self) -> list[dict[str, Any]]:
        rows = []
        for entry in sorted(self.dp.conntrack(), key=lambda e: e.created_ns):
            row = entry.to_json()
            row.update(proto=entry.protocol.lower(), src=f"{entry.src}:{entry.sport}", dst=f"{entry.dst}:{entry.dport}",
                       flags=",".join(entry.flags) or "-")
            rows.append(row)
        return rows
