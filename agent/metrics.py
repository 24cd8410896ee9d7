"""Prometheus metrics of the agent, in Prometheus naming conventions (membrane_ prefix,
base units, _total counters). Datapath counters are read from the per-CPU BPF metrics map
at scrape time, so the hot path pays nothing extra for being exported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from membrane.standard_metrics import add_standard_metrics

from .heap_freezing import GENERATIONS, GcPauses, frozen_objects
from .prefilter_queries import PrefilterCounters, PrefilterQueries

Sample = tuple[str, str, int, int]  # reason, direction, packets, bytes
# (map, op) pairs of membrane_bpf_map_operation_errors_total (agent/datapath_port.py counts them)
MAP_OPERATIONS = (("endpoints", "update"), ("endpoints", "delete"), ("policy", "update"), ("policy", "delete"),
                  ("ipcache", "update"), ("ipcache", "delete"), ("cidr", "update"), ("cidr", "delete"),
                  ("conntrack", "gc"))


class DatapathCollector(Collector):
    def __init__(self, read_counters: Callable[[], Iterable[Sample]],
                 read_endpoint_states: Callable[[], dict[str, int]],
                 read_map_usage: Callable[[], dict[str, tuple[int, int]]]) -> None:
        self.read_counters = read_counters
        self.read_endpoint_states = read_endpoint_states
        self.read_map_usage = read_map_usage

    def collect(self) -> Iterable[Any]:
        packets = CounterMetricFamily("membrane_datapath_packets", "Packets seen by the datapath, by verdict, "
                                      "reason and direction", labels=["verdict", "reason", "direction"])
        octets = CounterMetricFamily("membrane_datapath_bytes", "Bytes seen by the datapath, by verdict, reason "
                                     "and direction", labels=["verdict", "reason", "direction"])
        for reason, direction, pkts, nbytes in self.read_counters():
            verdict = "forwarded" if reason.startswith("forward") else "dropped"
            packets.add_metric([verdict, reason, direction], pkts)
            octets.add_metric([verdict, reason, direction], nbytes)
        yield packets
        yield octets
        states = GaugeMetricFamily("membrane_endpoints", "Endpoints on this node by state", labels=["state"])
        for state, count in sorted(self.read_endpoint_states().items()):
            states.add_metric([state], count)
        yield states
        entries = GaugeMetricFamily("membrane_bpf_map_entries", "Entries in a BPF map", labels=["map"])
        pressure = GaugeMetricFamily("membrane_bpf_map_pressure", "Fill ratio of a BPF map (entries / capacity)",
                                     labels=["map"])
        usage = sorted(self.read_map_usage().items())
        for name, (used, size) in usage:
            entries.add_metric([name], used)
            pressure.add_metric([name], used / size if size else 0.0)
        capacity = GaugeMetricFamily("membrane_bpf_map_capacity", "Max entries of a BPF map (policy, ipcache "
                                     "and cidr sized by agent flags)", labels=["map"])
        for name, (_used, size) in usage:
            capacity.add_metric([name], size)
        yield entries
        yield pressure
        yield capacity


class PrefilterCollector(Collector):
    """Per-rule counters of the XDP prefilter (PacketFilter rules, the sanity checks, CIDR deny
    lists), read from its per-CPU counter map through the read-only query interface at scrape
    time. Labels: `rule` (`<filter>.<rule>`, `sanity.<check>` or the deny list's name), `kind`
    (rule | deny-list), `action` (drop | count | ratelimit)."""

    def __init__(self, queries: PrefilterQueries) -> None:
        self.queries = queries

    def collect(self) -> Iterable[Any]:
        labels = ["rule", "kind", "action"]
        families = {
            "packets": CounterMetricFamily("membrane_prefilter_matched_packets", "Packets the XDP prefilter "
                                           "matched, by rule or deny list", labels=labels),
            "bytes": CounterMetricFamily("membrane_prefilter_matched_bytes", "Bytes of the packets the XDP "
                                         "prefilter matched, by rule or deny list", labels=labels),
            "dropped_packets": CounterMetricFamily("membrane_prefilter_dropped_packets", "Packets the XDP "
                                                   "prefilter dropped, by rule or deny list", labels=labels),
            "dropped_bytes": CounterMetricFamily("membrane_prefilter_dropped_bytes", "Bytes of the packets the "
                                                 "XDP prefilter dropped, by rule or deny list", labels=labels),
        }
        entries = self.queries.prefilter_entries()
        counters = self.queries.prefilter_counters()
        in_force = GaugeMetricFamily("membrane_prefilter_entries", "Rules and deny lists the XDP prefilter "
                                     "enforces on this node", labels=["kind"])
        kinds: dict[str, int] = {"rule": 0, "deny-list": 0}
        for entry in entries:
            kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
            found = counters.get(entry.name, PrefilterCounters())
            for field, family in families.items():
                family.add_metric([entry.name, entry.kind, entry.action], getattr(found, field))
        for kind, count in sorted(kinds.items()):
            in_force.add_metric([kind], count)
        yield from families.values()
        yield in_force


class GcPauseCollector(Collector):
    """The garbage collector's pauses (agent/heap_freezing.py times them; read at scrape time)
    and how many objects its frozen generation holds (the long-lived heap no collection walks)."""

    def __init__(self, pauses: GcPauses) -> None:
        self.pauses = pauses

    def collect(self) -> Iterable[Any]:
        family = HistogramMetricFamily("membrane_gc_pause_seconds", "Time the Python garbage collector held the "
                                       "agent (GIL held), by generation (2 = full collection)",
                                       labels=["generation"])
        for generation in GENERATIONS:
            buckets, total = self.pauses.histogram(generation)
            family.add_metric([str(generation)], buckets, total)
        yield family
        yield GaugeMetricFamily("membrane_gc_frozen_objects", "Objects in the garbage collector's permanent "
                                "generation (the agent's long-lived state, walked by no collection)",
                                value=frozen_objects())


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        add_standard_metrics(self.registry, "agent")
        self.cni_duration = Histogram("membrane_cni_request_duration_seconds", "Time to serve a CNI request",
                                      ["command", "outcome"], registry=self.registry,
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.bootstrap = Gauge("membrane_agent_bootstrap_seconds", "Agent start to ready", registry=self.registry)
        self.compile = Gauge("membrane_datapath_compile_seconds", "Datapath compile time at this start",
                             registry=self.registry)
        self.load = Gauge("membrane_datapath_load_seconds", "Datapath program load time at this start",
                          registry=self.registry)
        self.ct_gc_removed = Counter("membrane_conntrack_gc_deleted_entries", "Expired conntrack entries removed",
                                     registry=self.registry)
        self.map_errors = Counter("membrane_bpf_map_operation_errors", "Failed BPF map operations, by map and "
                                  "operation", ["map", "op"], registry=self.registry)
        for map_name, op in MAP_OPERATIONS:  # exported at 0 from the start: rate() and alerts see them
            self.map_errors.labels(map_name, op)
        self.store_objects = Gauge("membrane_store_objects", "Objects in the local store by kind", ["kind"],
                                   registry=self.registry)

        self.changes_refused = Counter("membrane_policy_changes_refused", "Policy changes refused because a BPF "
                                       "map would overflow (the old state stays enforced), by map", ["map"],
                                       registry=self.registry)
        for map_name in ("policy", "ipcache", "cidr"):
            self.changes_refused.labels(map_name)
        self.map_repairs = Counter("membrane_map_resync_repairs", "Map entries the periodic resync found "
                                   "different from what the agent wrote (drift), and rewrote, by map", ["map"],
                                   registry=self.registry)
        for map_name in ("endpoints", "policy", "ipcache", "cidr"):
            self.map_repairs.labels(map_name)
        self.xdp_attached = Gauge("membrane_xdp_attached", "The XDP prefilter is attached to a device (--devices), "
                                  "in mode native (driver) or generic (stack)", ["device", "mode"],
                                  registry=self.registry)
        self.enforced_version = Gauge("membrane_enforced_version", "Newest version of the desired state (store "
                                      "batch or stream version) whose map writes have all landed",
                                      registry=self.registry)
        self.policy_delay = Histogram("membrane_policy_implementation_delay_seconds",
                                      "Time from a change (store, endpoint) to its policy being in the maps",
                                      ["cause"], registry=self.registry,
                                      buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))

    def watch_state(self, identities: Callable[[], int], policies: Callable[[], int],
                    objects: Callable[[], dict[str, int]]) -> None:
        Gauge("membrane_identities", "Security identities allocated (reserved ones aside)",
              registry=self.registry).set_function(lambda: float(identities()))
        Gauge("membrane_policies", "NetworkPolicies known to this agent",
              registry=self.registry).set_function(lambda: float(policies()))
        self._objects = objects

    def add_gc_pauses(self, pauses: GcPauses) -> None:
        self.registry.register(GcPauseCollector(pauses))

    def refresh_store(self) -> None:
        for kind, count in self._objects().items():
            self.store_objects.labels(kind).set(count)

    def add_datapath(self, collector: DatapathCollector) -> None:
        self.registry.register(collector)

    def add_prefilter(self, queries: PrefilterQueries) -> None:
        self.registry.register(PrefilterCollector(queries))


class ServiceCollector(Collector):
    """Services at a scrape: what the load balancer holds (its query interface) and what the
    socket hooks did (per-CPU counters of mb_lb_stats_v1, summed)."""

    def __init__(self, read_summary: Callable[[], dict[str, int]],
                 read_stats: Callable[[], dict[str, int]]) -> None:
        self.read_summary = read_summary
        self.read_stats = read_stats

    def collect(self) -> Iterable[Any]:
        summary = self.read_summary()
        for name, key, text in (
                ("membrane_services", "services", "Services with at least one frontend on this node"),
                ("membrane_service_frontends", "frontends", "Service frontends (address, port, protocol) in the "
                                                            "load balancer"),
                ("membrane_service_backends", "backends", "Distinct service backends in the load balancer"),
                ("membrane_service_frontends_without_backend", "frontends_without_backend",
                 "Frontends with no usable backend (connections refused)")):
            yield GaugeMetricFamily(name, text, value=summary.get(key, 0))
        translations = CounterMetricFamily(
            "membrane_service_translations", "Socket-level service translations by outcome: translated, refused "
            "(no usable backend), failed (a slot without its backend), reversed (replies/getpeername), "
            "affinity_hit", labels=["outcome"])
        for outcome, count in sorted(self.read_stats().items()):
            translations.add_metric([outcome], count)
        yield translations
