"""Compile and load the datapath with bcc, and access its pinned maps.

``Datapath`` is the agent's handle on ``bpf/bpf_lxc.c`` (pod veths),
``bpf/bpf_overlay.c`` (the VXLAN device), ``bpf/bpf_host.c`` (the node's
devices: per-packet Services), ``bpf/bpf_sock.c`` (cgroup socket
hooks: Services) and ``bpf/bpf_xdp.c`` (the XDP prefilter on the node's devices),
one compilation unit: compiled once per
agent start, its maps pinned under ``pin_root`` so that a restarted agent
(or a new build with the same layout versions) picks up the very same maps
while the programs already attached keep forwarding.

Program families (``FAMILIES``): the unit holds the entry files of the families asked for
only (the pod family always; the agent adds ``host`` and ``xdp`` with --devices, ``sock``
with --cgroup-root), so a node compiles what it attaches. Every map is declared in
``bpf/maps.h``, which each entry file includes: all maps are created (or reopened), pinned
and layout-checked whatever the families, so the managers work unchanged and a later start
with more families reuses the same pins.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from bcc import BPF  # the one place bcc is imported

from membrane.agent.datapath.cgroup_attaching import SOCK_HOOKS
from membrane.agent.datapath.conntrack import ConntrackEntry, conntrack_cflags, is_expired
from membrane.agent.datapath.encoding import ip_to_field, port_to_field, struct_copy
from membrane.agent.datapath.endpoints import EndpointEntry
from membrane.agent.datapath.events import EventConfig, EventStats
from membrane.agent.datapath.flattening import flatten_sources
from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.agent.datapath.layout import (
    CIDR,
    CONNTRACK,
    ENDPOINTS,
    EVENT_CONFIG,
    EVENT_STATS,
    EVENTS,
    IPCACHE,
    LB_AFFINITY,
    LB_BACKENDS,
    LB_SERVICES,
    LB_SOCK,
    LB_STATS,
    MAP_SPECS,
    METRICS,
    NODE_CONFIG,
    PINNED_NAMES,
    POLICY,
    POLICY_REV,
    PREFILTER_CONFIG,
    PREFILTER_COUNTERS,
    PREFILTER_RULES,
    RESIZABLE,
    RETIRED_PINS,
    ArrayIndex,
    CtEntry,
    CtTuple4,
    EventConfigValue,
    EventStatsValue,
    LbStat,
    MapInfo,
    MapSpec,
    MetricsKey,
    MetricsValue,
    NodeConfigValue,
    PolicyRevValue,
    PrefilterConfigValue,
    PrefilterCounterValue,
    PrefilterRuleValue,
    RingSpec,
    check_map_info,
    check_struct,
)
from membrane.agent.datapath.metrics import MetricSample, summed_samples
from membrane.agent.datapath.node_config import NodeConfig
from membrane.agent.datapath.pinned_maps import CODECS, PinnedMap, write_delta
from membrane.agent.datapath.prefilter import ActiveSet, RuleCounters, encoded_rule, rule_value
from membrane.agent.datapath.prefilter import slot as prefilter_slot
from membrane.agent.datapath.shared_constants import drift, static_asserts
from membrane.agent.datapath.syscalls import map_count_entries, map_info, map_update_batch, pinned_map_info
from membrane.agent.datapath.witness import WITNESS_NAME
from membrane.delta import Delta
from membrane.lb_maps import DEFAULT_MAGLEV_SIZE
from membrane.maglev import check_size
from membrane.policy.flattening import FlatKey, FlatValue
from membrane.prefilter_rules import EncodedRule

DEFAULT_BPF_DIR: Final = Path(__file__).resolve().parents[2] / "bpf"
SHARED_HEADERS: Final = ("types.h", "lib/events.h")  # numbers checked against Python at load (shared_constants)


@dataclasses.dataclass(frozen=True)
class Family:
    """Entry files compiled together for one kind of attach point, and the programs they define."""

    entry_files: tuple[str, ...]
    tc_programs: tuple[str, ...] = ()  # SCHED_CLS
    sock_programs: Mapping[str, int] = dataclasses.field(default_factory=dict)  # CGROUP_SOCK_ADDR -> attach type
    xdp_programs: tuple[str, ...] = ()

    @property
    def programs(self) -> tuple[str, ...]:
        return (*self.tc_programs, *self.sock_programs, *self.xdp_programs)


POD_FAMILY: Final = "pod"
FAMILIES: Final[Mapping[str, Family]] = {
    POD_FAMILY: Family(("bpf_lxc.c", "bpf_overlay.c"),  # pod veths and the VXLAN device: always
                       tc_programs=("from_container", "to_container", "from_overlay", "to_overlay")),
    "host": Family(("bpf_host.c",), tc_programs=("from_netdev", "to_netdev")),  # --devices
    "sock": Family(("bpf_sock.c",), sock_programs=SOCK_HOOKS),  # --cgroup-root
    "xdp": Family(("bpf_xdp.c",), xdp_programs=("xdp_prefilter",)),  # --devices
}
ALL_FAMILIES: Final = frozenset(FAMILIES)
ENTRY_FILES: Final = tuple(name for family in FAMILIES.values() for name in family.entry_files)  # all of them
ENTRY_FILE: Final = ENTRY_FILES[0]
PROGRAMS: Final = tuple(name for family in FAMILIES.values() for name in family.tc_programs)  # tc (SCHED_CLS)
SOCK_PROGRAMS: Final = SOCK_HOOKS  # cgroup sock_addr programs -> their (expected) attach type
XDP_PROGRAMS: Final = FAMILIES["xdp"].xdp_programs
_FAMILY_OF: Final = {program: name for name, family in FAMILIES.items() for program in family.programs}
# Compile time (agent start), not code: bcc runs its own -O3 pipeline (always_inline included) on
# clang's IR, so clang's -O2 pass pipeline before it was done twice; and -g0 drops the debug info
# bcc turns into BTF, which nothing reads (the maps' layouts are checked against bcc's own type
# descriptions, not BTF). Together a third less CPU per compile; equivalent programs, all verify.
FAST_COMPILE_CFLAGS: Final = ("-Xclang", "-disable-llvm-passes", "-g0")


def families_for(devices: bool, cgroup_root: bool) -> frozenset[str]:
    """The families an agent attaches: pods always; node devices (per-packet Services and
    the XDP prefilter) with --devices; socket hooks with --cgroup-root."""
    return frozenset({POD_FAMILY, *(("host", "xdp") if devices else ()), *(("sock",) if cgroup_root else ())})

log = logging.getLogger("membrane.datapath")

# The pin root ends up inside a C string literal: keep it boring.
_SAFE_PATH: Final = re.compile(r"^/[A-Za-z0-9._/-]+$")


class DatapathError(RuntimeError):
    """Datapath cannot compile, or is misused (not loaded, unknown program, bad pin root)."""


class Datapath:
    """The compiled bpf_lxc programs and typed access to their pinned maps."""

    def __init__(self, pin_root: Path, bpf_dir: Path = DEFAULT_BPF_DIR, *, events: bool = True,
                 test_hooks: bool = False, kernel_headers: Path | None = None,
                 sizes: Mapping[str, int] | None = None, maglev_size: int = DEFAULT_MAGLEV_SIZE,
                 families: Iterable[str] = ALL_FAMILIES) -> None:
        """events=False compiles flow events out entirely (benchmarks: cost of events).

        sizes: max entries by map role, for the maps in ``layout.RESIZABLE`` (policy, ipcache,
        cidr); others keep their built-in size.

        test_hooks=True (tests only): ``from_overlay`` takes the VNI from skb->mark (and the outer
        source address, network order, from skb->cb[0]) when the packet
        has no tunnel metadata, which BPF_PROG_TEST_RUN cannot attach.

        kernel_headers: a header tree to compile against instead of the node's /lib/modules.

        maglev_size: entries of each per-packet frontend's Maglev table (a prime; the LB
        manager writes tables of this size).

        families: the program families to compile and load (``FAMILIES``; the pod family is
        always in). Maps are the same whatever the families.
        """
        check_size(maglev_size)
        unknown_families = sorted(set(families) - ALL_FAMILIES)
        if unknown_families:
            raise DatapathError(f"no program family {unknown_families}; have {sorted(ALL_FAMILIES)}")
        self.families = frozenset({POD_FAMILY, *families})
        self.maglev_size = maglev_size
        self.pin_root = Path(pin_root)
        self.bpf_dir = Path(bpf_dir)
        self.events_compiled = events
        self.test_hooks = test_hooks
        self.kernel_headers = kernel_headers
        if not _SAFE_PATH.match(str(self.pin_root)):
            raise DatapathError(f"pin root must be an absolute plain path, got {pin_root!s}")
        self.compile_seconds: float | None = None  # clang + map creation/reuse
        self.load_seconds: float | None = None  # verifier, both programs
        self._bpf: BPF | None = None
        self._program_fds: dict[str, int] = {}
        self._events_open = False
        self._events_table: Any = None
        self._maps: dict[str, PinnedMap] = {}
        # bcc's get_table() decodes the map's key and value types from JSON into new ctypes
        # classes at every call (~0.1 ms): a table is made once per load and reused (it holds
        # only the fd and those types; every operation is a syscall on the fd).
        self._tables: dict[str, Any] = {}
        self._event_errors: list[BaseException] = []
        unknown = sorted(set(sizes or {}) - set(RESIZABLE))
        if unknown:
            raise DatapathError(f"map sizes can be set for {list(RESIZABLE)} only, not {unknown}")
        self.specs: dict[str, MapSpec] = {
            spec.role: dataclasses.replace(spec, max_entries=int((sizes or {}).get(spec.role, spec.max_entries)))
            for spec in MAP_SPECS}
        self.resized: dict[str, tuple[int, int]] = {}  # role -> (pinned size, new size) at the last load

    # -- lifecycle ---------------------------------------------------------

    def load(self) -> None:
        """Compile the entry files, create or reopen the pinned maps, load the programs."""
        self.compile()
        try:
            self.load_programs()
        except BaseException:
            self.close()
            raise

    def compile(self) -> None:
        """Compile the entry files, create or reopen the pinned maps and check their layouts:
        the maps are usable from here on; `load_programs` loads the programs (the verifier)."""
        if self._bpf is not None:
            raise DatapathError("datapath already loaded")
        self.pin_root.mkdir(parents=True, exist_ok=True)
        self._retire_pins()
        # The numbers C and Python share must agree before anything is compiled (one line naming each);
        # the _Static_asserts compiled with the programs make the compiler confirm them as well.
        headers = [self.bpf_dir / name for name in SHARED_HEADERS]
        problems = drift(path.read_text() for path in headers)
        if problems:
            raise DatapathError(f"{', '.join(str(h) for h in headers)} and the agent's Python constants disagree: "
                                f"{'; '.join(problems)}")
        entry_files = self.entry_files()
        text = flatten_sources([self.bpf_dir / name for name in entry_files]) + "\n" + static_asserts()
        if self.kernel_headers is not None:
            # bcc reads it from the environment at each compile; nothing else compiles in the agent.
            os.environ["BCC_KERNEL_SOURCE"] = str(self.kernel_headers)
        started = time.perf_counter()
        try:
            bpf = BPF(text=text.encode(), cflags=self._cflags())
        except Exception as exc:  # bcc raises bare Exception; clang's diagnostics went to stderr
            raise DatapathError(f"compiling {', '.join(entry_files)} in {self.bpf_dir} failed: {exc}") from exc
        self.compile_seconds = time.perf_counter() - started
        try:
            # Before any program is loaded or map used: a stale pin with another layout
            # would otherwise be silently reused by bcc.
            self._check_layouts(bpf)
        except BaseException:
            bpf.cleanup()
            raise
        self._bpf, self._program_fds = bpf, {}

    def load_programs(self) -> None:
        """Load the compiled families' programs (after `compile`; may run on another thread
        while the maps are read and written: each is its own bpf(2) call)."""
        bpf = self._loaded()
        if self._program_fds:  # the pod family is always in: loaded programs are never none
            raise DatapathError("programs already loaded")
        started = time.perf_counter()
        fds: dict[str, int] = {}
        for family in (FAMILIES[name] for name in FAMILIES if name in self.families):
            fds.update({name: int(bpf.load_func(name.encode(), BPF.SCHED_CLS).fd) for name in family.tc_programs})
            fds.update({name: int(bpf.load_func(name.encode(), BPF.CGROUP_SOCK_ADDR, attach_type=attach).fd)
                        for name, attach in family.sock_programs.items()})
            fds.update({name: int(bpf.load_func(name.encode(), BPF.XDP).fd) for name in family.xdp_programs})
        self.load_seconds = time.perf_counter() - started
        self._program_fds = fds

    def _retire_pins(self) -> None:
        """Before bcc reuses pins: remove old layout versions, and resizable maps pinned with
        another size (the agent refills them from its state before it attaches the new
        programs; the attached old programs keep the old map alive until then)."""
        for name in RETIRED_PINS:
            if (self.pin_root / name).exists():
                (self.pin_root / name).unlink()
                log.warning("removed the pin of an older map layout", extra={"fields": {"map": name}})
        self.resized = {}
        for role in RESIZABLE:
            spec = self.specs[role]
            path = self.pin_root / spec.name
            info = pinned_map_info(str(path)) if path.exists() else None
            if info is not None and info.max_entries != spec.max_entries:
                path.unlink()
                self.resized[role] = (int(info.max_entries), spec.max_entries)
                log.warning("map resized: its content is rebuilt before the programs are replaced",
                            extra={"fields": {"map": spec.name, "old_entries": int(info.max_entries),
                                              "new_entries": spec.max_entries}})

    def entry_files(self) -> tuple[str, ...]:
        """The entry files of the families this datapath compiles, in ``FAMILIES`` order."""
        return tuple(name for family, found in FAMILIES.items() if family in self.families
                     for name in found.entry_files)

    def capacity(self, role: str) -> int:
        """Max entries of a map, by role ("policy", "ipcache", "cidr", ...)."""
        return self.specs[role].max_entries

    def close(self) -> None:
        """Close program and map fds. Pins (and attached programs) stay."""
        if self._bpf is not None:
            self._bpf.cleanup()
        self._bpf, self._program_fds, self._maps, self._tables = None, {}, {}, {}
        self._events_open, self._events_table = False, None

    def unpin(self) -> None:
        """Remove this datapath's pinned maps and the pin root if it is then empty."""
        for name in (*PINNED_NAMES, WITNESS_NAME):
            (self.pin_root / name).unlink(missing_ok=True)
        try:
            self.pin_root.rmdir()
        except OSError:
            pass  # already gone, or something else lives there: not ours to remove

    @property
    def loaded(self) -> bool:
        return self._bpf is not None

    def __enter__(self) -> Datapath:
        if self._bpf is None:
            self.load()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- programs ------------------------------------------------------------

    def program_fd(self, name: str) -> int:
        """fd of a loaded program ("from_container", "to_container", "from_overlay", "mb_sock4_*")."""
        self._loaded()
        if not self._program_fds:
            raise DatapathError("programs not loaded: call load_programs() first")
        try:
            return self._program_fds[name]
        except KeyError:
            family = _FAMILY_OF.get(name)
            if family is not None:
                raise DatapathError(f"program {name!r} is in the {family!r} family, which this datapath did not "
                                    f"load (families {sorted(self.families)})") from None
            raise DatapathError(f"no program {name!r}; have {sorted(self._program_fds)}") from None

    # -- keyed maps (endpoints, ipcache, cidr, policy): one generic path ------------

    def pinned_map(self, role: str) -> PinnedMap:
        """Typed access to a keyed map ("endpoints", "ipcache", "cidr", "policy")."""
        if role not in CODECS:
            raise DatapathError(f"no keyed map {role!r}; have {sorted(CODECS)}")
        found = self._maps.get(role)
        if found is None:
            found = self._maps[role] = PinnedMap(role, self._table(self.specs[role]))
        return found

    def read_map(self, role: str) -> dict[Any, Any]:
        """The whole map, decoded (keys and values as ``pinned_maps.CODECS`` says)."""
        return self.pinned_map(role).read()

    def update_map(self, role: str, entries: Mapping[Any, Any]) -> None:
        """Write entries in their order (batched where the map type allows)."""
        self.pinned_map(role).update(entries.items())

    def delete_map(self, role: str, keys: Sequence[Any]) -> int:
        """Delete keys in their order; returns how many were there."""
        return self.pinned_map(role).delete(keys)

    def apply_delta(self, role: str, delta: Delta[Any, Any]) -> None:
        """Write a ``membrane.delta.diff(desired, read_map(role))``: updates first, then deletes."""
        write_delta(self.pinned_map(role), delta.upserts, delta.deletes)

    # Readers' shorthands (tests, membranectl dumps).
    def endpoints(self) -> dict[IPv4Address, EndpointEntry]:
        return self.read_map("endpoints")

    def ipcache(self) -> dict[IPv4Network, IpcacheEntry]:
        return self.read_map("ipcache")

    def cidrs(self) -> dict[IPv4Network, int]:
        """ipBlock prefix -> CIDR identity (the map the datapath finds an address's CIDR identity in)."""
        return self.read_map("cidr")

    def policy(self) -> dict[FlatKey, FlatValue]:
        """The policy map, as ``membrane.policy.flattening.flatten`` describes it."""
        return self.read_map("policy")

    # -- conntrack -----------------------------------------------------------

    def conntrack(self, now_ns: int | None = None) -> list[ConntrackEntry]:
        """All flows; ages are relative to now_ns (CLOCK_MONOTONIC, like bpf_ktime_get_ns)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        return [
            ConntrackEntry.from_structs(struct_copy(CtTuple4, key), struct_copy(CtEntry, value), now)
            for key, value in self._table(CONNTRACK).items()
        ]

    def conntrack_gc(self, now_ns: int | None = None) -> int:
        """Delete flows idle for longer than their lifetime; return how many."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        table = self._table(CONNTRACK)
        expired = [key for key, value in table.items() if is_expired(struct_copy(CtEntry, value), now)]
        removed = 0
        for key in expired:
            try:
                # Re-read right before deleting: a packet may have refreshed
                # the flow since the walk (narrows, cannot close, the race).
                if not is_expired(struct_copy(CtEntry, table[key]), now):
                    continue
                del table[key]
                removed += 1
            except KeyError:  # evicted by the LRU meanwhile: fine
                pass
        return removed

    # -- metrics -------------------------------------------------------------

    def metrics(self) -> list[MetricSample]:
        """Counters per (reason, direction), summed over CPUs."""
        table = self._table(METRICS)
        per_cpu = []
        for key in table:
            try:
                values = table[key]  # one Leaf per possible CPU
            except KeyError:
                continue
            per_cpu.append(
                (struct_copy(MetricsKey, key), [struct_copy(MetricsValue, value) for value in values])
            )
        return summed_samples(per_cpu)

    # -- policy revision (re-judges established flows) ------------------------

    def policy_revision(self) -> int:
        table = self._table(POLICY_REV)
        return int(struct_copy(PolicyRevValue, table[struct_copy(table.Key, ArrayIndex(0))]).revision)

    def set_policy_revision(self, revision: int) -> None:
        """Every conntrack entry judged under another revision is judged again on its next packet."""
        table = self._table(POLICY_REV)
        table[struct_copy(table.Key, ArrayIndex(0))] = struct_copy(
            table.Leaf, PolicyRevValue(revision=revision & 0xFFFFFFFF))

    def bump_policy_revision(self) -> int:
        """Next revision (never 0 after a wrap: 0 is what a fresh map reads as)."""
        revision = (self.policy_revision() + 1) & 0xFFFFFFFF or 1
        self.set_policy_revision(revision)
        return revision

    # -- services: per-CPU counters of the socket hooks ------------------------

    def lb_stats(self) -> dict[str, int]:
        """Translations, refusals, reverse translations, affinity hits, failures (summed over CPUs)."""
        table = self._table(LB_STATS)
        out = {}
        for stat in LbStat:
            values = table[struct_copy(table.Key, ArrayIndex(int(stat)))]
            out[stat.name.lower()] = sum(int(v.count) for v in values)
        return out

    # -- XDP prefilter ---------------------------------------------------------

    def prefilter_active(self) -> ActiveSet:
        """Which bank of rules is in force, how many, and the set's generation."""
        table = self._table(PREFILTER_CONFIG)
        return ActiveSet.from_struct(struct_copy(PrefilterConfigValue, table[struct_copy(table.Key, ArrayIndex(0))]))

    def set_prefilter_active(self, active: ActiveSet) -> None:
        """Switch the rule set in force: one array write, whose `active` word the datapath reads once
        per packet (the bank written before must be complete)."""
        table = self._table(PREFILTER_CONFIG)
        table[struct_copy(table.Key, ArrayIndex(0))] = struct_copy(table.Leaf, active.to_struct())

    def write_prefilter_rules(self, bank: int, rules: Sequence[EncodedRule]) -> None:
        """Write rules into a bank's first slots, in order (the bank not in force: see set_prefilter_active)."""
        if bank not in (0, 1) or len(rules) > self.specs["prefilter_rules"].max_entries // 2:
            raise DatapathError(f"bank {bank} with {len(rules)} rules: bank 0 or 1, "
                                f"at most {self.specs['prefilter_rules'].max_entries // 2} rules")
        if not rules:
            return
        table = self._table(PREFILTER_RULES)
        keys = b"".join(bytes(ArrayIndex(prefilter_slot(bank, i))) for i in range(len(rules)))
        values = b"".join(bytes(rule_value(rule)) for rule in rules)
        map_update_batch(int(table.map_fd), keys, values, len(rules))

    def prefilter_rules(self, bank: int, count: int) -> list[EncodedRule]:
        table = self._table(PREFILTER_RULES)
        return [encoded_rule(struct_copy(PrefilterRuleValue, table[struct_copy(table.Key, ArrayIndex(
            prefilter_slot(bank, i)))])) for i in range(count)]

    def prefilter_counters(self, refs: Iterable[int]) -> dict[int, RuleCounters]:
        """Counters of the given slots (rules and deny lists), summed over CPUs."""
        table = self._table(PREFILTER_COUNTERS)
        return {ref: RuleCounters.summed(struct_copy(PrefilterCounterValue, value)
                                         for value in table[struct_copy(table.Key, ArrayIndex(ref))])
                for ref in refs}

    def reset_prefilter_counters(self, refs: Iterable[int]) -> None:
        """Zero slots on every CPU (before a slot counts for a new rule or list)."""
        table = self._table(PREFILTER_COUNTERS)
        for ref in refs:
            table[struct_copy(table.Key, ArrayIndex(ref))] = table.Leaf()

    def sock_translated(self, cookie: int, address: IPv4Address, port: int, protocol: int) -> bool:
        """Did the socket hooks translate socket `cookie` to this backend (mb_lb4_sock_v1)?"""
        table = self._table(LB_SOCK)
        key = table.Key(cookie=cookie, address=ip_to_field(address), port=port_to_field(port), proto=protocol)
        try:
            table[key]
        except KeyError:
            return False
        return True

    # -- node config ---------------------------------------------------------

    def node_config(self) -> NodeConfig:
        table = self._table(NODE_CONFIG)
        return NodeConfig.from_struct(struct_copy(NodeConfigValue, table[struct_copy(table.Key, ArrayIndex(0))]))

    def set_node_config(self, config: NodeConfig) -> None:
        """Tell the datapath its tunnel device (takes effect on the next packet)."""
        table = self._table(NODE_CONFIG)
        table[struct_copy(table.Key, ArrayIndex(0))] = struct_copy(table.Leaf, config.to_struct())

    # -- flow events ---------------------------------------------------------

    def open_events(self, callback: Callable[[bytes], None]) -> None:
        """Call ``callback(record)`` for each event read by ``poll_events``.

        ``record`` is the raw ``struct mb_flow_event`` (``layout.FlowEvent.from_buffer_copy``
        decodes it). An exception raised by the callback is re-raised by ``poll_events``.
        """
        bpf = self._loaded()
        if self._events_open:
            raise DatapathError("events already open")
        size = ctypes.sizeof(EVENTS.record)

        def on_record(_ctx: Any, data: Any, length: int) -> int:
            try:
                callback(ctypes.string_at(data, min(length, size)))
            except BaseException as exc:  # noqa: BLE001 - bcc would print and swallow it; kept for the caller
                self._event_errors.append(exc)
                return -1  # stops this poll
            return 0

        table = bpf.get_table(EVENTS.name.encode())
        table.open_ring_buffer(on_record)
        # get_table() builds a new object each call, and only that object keeps the
        # ctypes callback alive: dropping it leaves libbcc calling freed memory.
        self._events_table = table
        self._events_open = True

    def poll_events(self, timeout_ms: int = 0) -> None:
        """Deliver pending events to the callback; wait up to timeout_ms for the first (-1 = forever)."""
        if not self._events_open:
            raise DatapathError("call open_events(callback) first")
        self._loaded().ring_buffer_poll(timeout_ms)
        if self._event_errors:
            error, self._event_errors = self._event_errors[0], []
            raise error

    def event_stats(self) -> EventStats:
        """Emitted and lost events (rate limited, ring full), summed over CPUs."""
        table = self._table(EVENT_STATS)
        values = table[struct_copy(table.Key, ArrayIndex(0))]
        return EventStats.summed(struct_copy(EventStatsValue, value) for value in values)

    def events_lost(self) -> dict[str, int]:
        """Cumulative events the datapath could not emit, by reason (the observer's lost counters)."""
        stats = self.event_stats()
        return {"rate_limited": stats.rate_limited, "ringbuf_full": stats.ringbuf_full}

    def event_config(self) -> EventConfig:
        table = self._table(EVENT_CONFIG)
        return EventConfig.from_struct(struct_copy(EventConfigValue, table[struct_copy(table.Key, ArrayIndex(0))]))

    def set_event_config(self, config: EventConfig) -> None:
        """Switch events on/off and set the rate (takes effect on the next event)."""
        table = self._table(EVENT_CONFIG)
        table[struct_copy(table.Key, ArrayIndex(0))] = struct_copy(table.Leaf, config.to_struct())

    # -- introspection -------------------------------------------------------

    def compiled_layouts(self) -> dict[str, tuple[type[ctypes.Structure], type[ctypes.Structure]]]:
        """(key, value) ctypes classes bcc derived from the C source, by map name."""
        bpf = self._loaded()
        layouts = {}
        for spec in self.specs.values():
            table = bpf.get_table(spec.name.encode())
            # Per-CPU tables: bcc's Leaf is an array over CPUs, sLeaf the struct.
            layouts[spec.name] = (table.Key, getattr(table, "sLeaf", table.Leaf))
        return layouts

    def check_layouts(self) -> None:
        """Raise LayoutMismatch unless mirrors, compiled program and kernel maps agree."""
        self._check_layouts(self._loaded())

    def maps_info(self) -> dict[str, MapInfo]:
        """Kernel view of each map, by map name (the map id shows pin reuse)."""
        bpf = self._loaded()
        specs: list[MapSpec | RingSpec] = [*self.specs.values(), EVENTS]
        return {spec.name: _kernel_map_info(bpf, spec) for spec in specs}

    def map_entry_counts(self) -> dict[str, tuple[int, int]]:
        """(entries, capacity) of each keyed map, by role, counted in the kernel's batches or by
        walking keys (never through bcc's per-entry items(): cheap enough for a metrics scrape,
        even with a full conntrack map)."""
        bpf = self._loaded()
        counts = {}
        for spec in (self.specs[s.role] for s in (ENDPOINTS, CONNTRACK, IPCACHE, POLICY, CIDR, METRICS,
                                                   LB_SERVICES, LB_BACKENDS, LB_AFFINITY, LB_SOCK)):
            fd = bpf.get_table(spec.name.encode()).map_fd
            counts[spec.role] = (map_count_entries(fd, spec.max_entries), spec.max_entries)
        return counts

    # -- internals -----------------------------------------------------------

    def _cflags(self) -> list[str]:
        return [
            f'-DMB_PIN_ROOT="{self.pin_root}"',
            f"-DMB_ENDPOINTS_MAX={self.specs['endpoints'].max_entries}",
            f"-DMB_CT_MAX={self.specs['conntrack'].max_entries}",
            f"-DMB_METRICS_MAX={self.specs['metrics'].max_entries}",
            f"-DMB_IPCACHE_MAX={self.specs['ipcache'].max_entries}",
            f"-DMB_POLICY_MAX={self.specs['policy'].max_entries}",
            f"-DMB_CIDR_MAX={self.specs['cidr'].max_entries}",
            f"-DMB_LB_SERVICES_MAX={self.specs['lb_services'].max_entries}",
            f"-DMB_LB_BACKENDS_MAX={self.specs['lb_backends'].max_entries}",
            f"-DMB_LB_REV_NAT_MAX={self.specs['lb_rev_nat'].max_entries}",
            f"-DMB_LB_AFFINITY_MAX={self.specs['lb_affinity'].max_entries}",
            f"-DMB_LB_SOCK_MAX={self.specs['lb_sock'].max_entries}",
            f"-DMB_LB_MAGLEV_MAX={self.specs['lb_maglev'].max_entries}",
            f"-DMB_LB_MAGLEV_SIZE={self.maglev_size}",
            f"-DMB_LB_NAT_MAX={self.specs['lb_nat'].max_entries}",
            f"-DMB_PREFILTER_CIDR_MAX={self.specs['prefilter_cidr'].max_entries}",
            f"-DMB_EVENTS_RINGBUF_BYTES={EVENTS.size_bytes}",
            *conntrack_cflags(),
            *([] if self.events_compiled else ["-DMB_EVENTS_OFF"]),
            *(["-DMB_TEST_TUNNEL_FROM_MARK"] if self.test_hooks else []),
            *FAST_COMPILE_CFLAGS,
        ]

    def _check_layouts(self, bpf: BPF) -> None:
        for spec in self.specs.values():
            table = bpf.get_table(spec.name.encode())
            check_struct(spec.key, table.Key, f"{spec.name} key")
            # Per-CPU tables: bcc's Leaf is an array over CPUs, sLeaf the struct.
            check_struct(spec.value, getattr(table, "sLeaf", table.Leaf), f"{spec.name} value")
            check_map_info(spec, _kernel_map_info(bpf, spec), str(self.pin_root / spec.name))
        witness = bpf.get_table(EVENTS.layout_witness.encode())
        check_struct(EVENTS.record, getattr(witness, "sLeaf", witness.Leaf), f"{EVENTS.name} record")
        check_map_info(EVENTS, _kernel_map_info(bpf, EVENTS), str(self.pin_root / EVENTS.name))

    def _loaded(self) -> BPF:
        if self._bpf is None:
            raise DatapathError("datapath not loaded: call load() first")
        return self._bpf

    def _table(self, spec: MapSpec) -> Any:
        found = self._tables.get(spec.name)
        if found is None:
            found = self._tables[spec.name] = self._loaded().get_table(spec.name.encode())
        return found


def _kernel_map_info(bpf: BPF, spec: MapSpec | RingSpec) -> MapInfo:
    raw = map_info(bpf.get_table(spec.name.encode()).map_fd)
    return MapInfo(raw.type, raw.id, raw.key_size, raw.value_size, raw.max_entries, raw.map_flags)
