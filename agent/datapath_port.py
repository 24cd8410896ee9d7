"""The agent's view of the datapath: endpoint map deltas, program fds, counters and dumps.

Wraps `datapath.Datapath` (the bcc adapter) with the shapes the endpoint manager, the
metrics exporter and membranectl use, so none of them needs to know about ctypes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Final

from membrane.delta import Delta
from membrane.lb_maps import DEFAULT_MAGLEV_SIZE
from membrane.prefilter_rules import EncodedRule

from .datapath import Datapath, EndpointEntry
from .datapath.cgroup_attaching import SOCK_HOOKS, attach_sock_hooks
from .datapath.ipcache import IpcacheEntry
from .datapath.layout import LbBackendFlag, LbFlag
from .datapath.loading import ALL_FAMILIES
from .datapath.node_config import NodeConfig
from .datapath.prefilter import ActiveSet, RuleCounters

PROGRAMS = ("from_container", "to_container")
_PROTO = {6: "TCP", 17: "UDP"}
NAT_ROWS_MAX: Final = 256  # `membranectl bpf lb` lists at most this many NAT entries (and the total)
MAP_USAGE_MAX_AGE_S = 5.0  # map entry counts are cached this long (a scrape walks every key)


class DatapathPort:
    def __init__(self, pin_root: Path, kernel_headers: Path | None = None,
                 sizes: dict[str, int] | None = None, maglev_size: int = DEFAULT_MAGLEV_SIZE,
                 families: Iterable[str] = ALL_FAMILIES) -> None:
        self.kernel_headers = kernel_headers
        self.sizes = dict(sizes or {})  # max entries of the resizable maps (policy, ipcache, cidr)
        self.maglev_size = maglev_size  # per-packet frontends' Maglev tables (compiled in: MB_LB_MAGLEV_SIZE)
        self.families = frozenset(families)  # program families compiled (loading.families_for)
        self.dp = Datapath(pin_root, kernel_headers=kernel_headers, sizes=self.sizes, maglev_size=maglev_size,
                           families=self.families)
        self.compile_seconds = 0.0
        self.load_seconds = 0.0
        # Called with (map role, operation) when a map write fails (membrane_bpf_map_operation_errors_total).
        self.on_map_error: Callable[[str, str], None] = lambda _map, _op: None
        self._usage: tuple[float, dict[str, tuple[int, int]]] | None = None

    @contextmanager
    def _counted(self, role: str, op: str) -> Iterator[None]:
        try:
            yield
        except Exception:
            self.on_map_error(role, op)
            raise

    def load(self, pin_root: Path | None = None) -> None:
        """Compile and load; `pin_root` overrides where maps are pinned (see bpffs.py)."""
        self.compile(pin_root)
        try:
            self.load_programs()
        except BaseException:
            self.dp.close()
            raise

    def compile(self, pin_root: Path | None = None) -> None:
        """Compile, maps created or reopened and checked: usable from here on (programs not yet)."""
        if pin_root is not None and pin_root != self.dp.pin_root:
            self.dp = Datapath(pin_root, kernel_headers=self.kernel_headers, sizes=self.sizes,
                               maglev_size=self.maglev_size, families=self.families)
        self.dp.compile()
        self.compile_seconds = self.dp.compile_seconds or 0.0

    def load_programs(self) -> None:
        self.dp.load_programs()
        self.load_seconds = self.dp.load_seconds or 0.0

    def close(self) -> None:
        self.dp.close()

    def programs(self) -> tuple[tuple[int, str], tuple[int, str]]:
        ingress, egress = ((self.dp.program_fd(name), name) for name in PROGRAMS)
        return ingress, egress

    def program(self, name: str) -> tuple[int, str]:
        """(fd, name) of one program, e.g. "from_overlay" for the tunnel device."""
        return self.dp.program_fd(name), name

    def attach_sock_hooks(self, cgroup: Path) -> dict[str, str]:
        """The Service socket hooks on a cgroup v2 directory (ours replaced in place)."""
        return attach_sock_hooks(cgroup, {name: self.dp.program_fd(name) for name in SOCK_HOOKS})

    def sock_translated(self, cookie: int, address: IPv4Address, port: int) -> bool:
        """A UDP socket the hooks translated to this backend (connected UDP termination)."""
        return self.dp.sock_translated(cookie, address, port, 17)

    def lb_stats(self) -> dict[str, int]:
        return self.dp.lb_stats()

    def set_node_config(self, config: NodeConfig) -> None:
        self.dp.set_node_config(config)

    def read_endpoints(self) -> dict[IPv4Address, EndpointEntry]:
        return self.dp.read_map("endpoints")

    def write_endpoints(self, delta: Delta[IPv4Address, EndpointEntry]) -> None:
        # Upserts first: a moved address is never briefly absent (batched: a hash map).
        if delta.upserts:
            self.update_map("endpoints", delta.upserts)
        if delta.deletes:
            self.delete_map("endpoints", delta.deletes)

    def capacity(self, role: str) -> int | None:
        return self.dp.capacity(role)

    def bump_policy_revision(self) -> int:
        with self._counted("policy_rev", "update"):
            return self.dp.bump_policy_revision()

    def read_map(self, role: str) -> dict[Any, Any]:
        """A keyed map's contents. ipcache values: the identity of each prefix, or the full
        entry when it has more (a tunnel endpoint, flags) - the policy manager's IpcacheTarget."""
        contents = self.dp.read_map(role)
        if role == "ipcache":
            return {prefix: entry if entry.tunnel_endpoint is not None or entry.flags else entry.identity
                    for prefix, entry in contents.items()}
        return contents

    def update_map(self, role: str, entries: Mapping[Any, Any]) -> None:
        if role == "ipcache":
            entries = {p: v if isinstance(v, IpcacheEntry) else IpcacheEntry(v) for p, v in entries.items()}
        with self._counted(role, "update"):
            self.dp.update_map(role, entries)

    def delete_map(self, role: str, keys: Sequence[Any]) -> int:
        with self._counted(role, "delete"):
            return self.dp.delete_map(role, keys)

    # XDP prefilter (agent/prefilter_syncing.py writes through these).
    def prefilter_active(self) -> ActiveSet:
        return self.dp.prefilter_active()

    def set_prefilter_active(self, active: ActiveSet) -> None:
        with self._counted("prefilter_config", "update"):
            self.dp.set_prefilter_active(active)

    def write_prefilter_rules(self, bank: int, rules: Sequence[EncodedRule]) -> None:
        with self._counted("prefilter_rules", "update"):
            self.dp.write_prefilter_rules(bank, rules)

    def prefilter_rules(self, bank: int, count: int) -> list[EncodedRule]:
        return self.dp.prefilter_rules(bank, count)

    def prefilter_counters(self, refs: Iterable[int]) -> dict[int, RuleCounters]:
        return self.dp.prefilter_counters(refs)

    def reset_prefilter_counters(self, refs: Iterable[int]) -> None:
        with self._counted("prefilter_counters", "update"):
            self.dp.reset_prefilter_counters(refs)

    def counters(self) -> list[tuple[str, str, int, int]]:
        return [(s.reason.lower(), s.direction.lower(), s.packets, s.bytes) for s in self.dp.metrics()]

    def conntrack_gc(self) -> int:
        with self._counted("conntrack", "gc"):
            return self.dp.conntrack_gc()

    def map_usage(self) -> dict[str, tuple[int, int]]:
        """(entries, capacity) by map: endpoints, conntrack, ipcache, policy, metrics.

        Counted by walking keys only (no value reads), and cached for a few seconds, so
        frequent scrapes of a node with a full conntrack map stay cheap."""
        now = time.monotonic()
        if self._usage is None or now - self._usage[0] > MAP_USAGE_MAX_AGE_S:
            self._usage = (now, self.dp.map_entry_counts())
        return self._usage[1]

    def dump_endpoints(self) -> list[dict[str, Any]]:
        return [{"ip": str(ip), **entry.to_json()} for ip, entry in sorted(self.dp.endpoints().items())]

    def dump_lb(self) -> dict[str, Any]:
        """The load balancer's maps as the kernel holds them (membranectl bpf lb)."""
        services = self.dp.read_map("lb_services")
        backends = self.dp.read_map("lb_backends")
        rows = []
        for key, master in sorted((k, v) for k, v in services.items() if not k.slot):
            slots = [services.get(type(key)(key.address, key.port, key.protocol, s, key.scope))
                     for s in range(1, master.count + 1)]
            chosen = []
            for slot in slots:
                backend = backends.get(slot.backend_id) if slot is not None else None
                chosen.append(f"{slot.backend_id if slot else '?'}={backend.address}:{backend.port}" if backend
                              else f"{slot.backend_id if slot else '?'}=missing")
            flags = [str(f.name).lower() for f in LbFlag if master.flags & f]
            rows.append({"frontend": f"{key.address}:{key.port}/{_PROTO.get(key.protocol, key.protocol)}",
                         "id": master.rev_nat_index, "scope": key.scope, "flags": ",".join(flags) or "-",
                         "slots": master.count, "affinity_timeout_s": master.affinity_timeout_s,
                         "backends": " ".join(chosen) or "(refuse)"})
        return {"services": rows,
                "backends": [{"id": i, "address": f"{b.address}:{b.port}", "protocol": _PROTO.get(b.protocol),
                              "flags": ",".join(str(f.name).lower() for f in LbBackendFlag if b.flags & f) or "-"}
                             for i, b in sorted(backends.items())],
                "rev_nat": [{"id": i, "frontend": f"{f.address}:{f.port}/{_PROTO.get(f.protocol, f.protocol)}"}
                            for i, f in sorted(self.dp.read_map("lb_rev_nat").items())],
                "maglev": self._maglev_summary(), **self._nat_rows(),
                "stats": self.dp.lb_stats()}

    def _maglev_summary(self) -> list[dict[str, Any]]:
        """Per frontend id: its Maglev table's size and how many entries each backend holds."""
        tables: dict[int, dict[int, int]] = {}
        for key, backend_id in self.dp.read_map("lb_maglev").items():
            counts = tables.setdefault(key.rev_nat_index, {})
            counts[backend_id] = counts.get(backend_id, 0) + 1
        return [{"id": i, "size": sum(c.values()),
                 "backends": " ".join(f"{b}={n}" for b, n in sorted(c.items()))}
                for i, c in sorted(tables.items())]

    def _nat_rows(self) -> dict[str, Any]:
        """The per-packet path's NAT entries, the first NAT_ROWS_MAX of them (the map holds 131072)."""
        entries = self.dp.read_map("lb_nat")
        rows = [{"dir": "reply" if key[5] else "forward",
                 "tuple": f"{key[0]}:{key[1]} -> {key[2]}:{key[3]}/{_PROTO.get(key[4], key[4])}", **value}
                for key, value in sorted(entries.items())[:NAT_ROWS_MAX]]
        return {"nat": rows, "nat_total": len(entries)}

    def dump_conntrack(self) -> list[dict[str, Any]]:
        rows = []
        for entry in sorted(self.dp.conntrack(), key=lambda e: e.created_ns):
            row = entry.to_json()
            row.update(proto=entry.protocol.lower(), src=f"{entry.src}:{entry.sport}", dst=f"{entry.dst}:{entry.dport}",
                       flags=",".join(entry.flags) or "-")
            rows.append(row)
        return rows
