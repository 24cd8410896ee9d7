"""Prometheus metrics of the operator (`membrane_operator_` prefix).

Each operator instance gets its own registry so several instances can live in one process
(tests, the standalone agent's embedded operator) without duplicate-series errors.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from membrane.standard_metrics import add_standard_metrics

PREFIX = "membrane_operator_"

# Propagation spans watch delivery, a controller pass, gRPC and the agent's apply: from
# milliseconds to tens of seconds when agents are slow.
PROPAGATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:  # its own: with the process, runtime and build-info metrics
            registry = CollectorRegistry()
            add_standard_metrics(registry, "operator")
        self.registry = registry
        r = self.registry
        self.watch_events = Counter(PREFIX + "watch_events_total", "Watch events received",
                                    ["resource", "type"], registry=r)
        self.watch_lists = Counter(PREFIX + "watch_lists_total",
                                   "Full lists (initial, relist after 410 Gone or error)",
                                   ["resource", "reason"], registry=r)
        self.watch_errors = Counter(PREFIX + "watch_errors_total",
                                    "Failed list or watch requests (code 0: connection error)",
                                    ["resource", "code"], registry=r)
        self.watch_restarts = Counter(PREFIX + "watch_restarts_total",
                                      "Watches resumed from the last resourceVersion",
                                      ["resource"], registry=r)
        self.is_leader = Gauge(PREFIX + "is_leader", "1 while this instance holds the lease",
                               registry=r)
        self.leader_transitions = Counter(PREFIX + "leader_transitions_total",
                                          "Times this instance became leader", registry=r)
        self.pod_cidrs = Gauge(PREFIX + "pod_cidrs_allocated", "Nodes with a PodCIDR", registry=r)
        self.pod_cidr_writes = Counter(PREFIX + "pod_cidr_writes_total",
                                       "PodCIDR annotations written", registry=r)
        self.identities = Gauge(PREFIX + "identities", "MembraneIdentity objects known",
                                registry=r)
        self.identity_allocations = Counter(PREFIX + "identity_allocations_total",
                                            "MembraneIdentity objects created", registry=r)
        self.identity_gc = Counter(PREFIX + "identity_gc_total",
                                   "MembraneIdentity objects deleted after their grace period",
                                   registry=r)
        self.invalid_policies = Gauge(PREFIX + "invalid_policies",
                                      "NetworkPolicies rejected by validation", registry=r)
        self.invalid_prefilter_objects = Gauge(
            PREFIX + "invalid_prefilter_objects", "PacketFilters and CIDRDenyLists the operator refused (streamed "
            "to no node: their status names the field and the reason), by kind", ["kind"], registry=r)
        for kind in ("PacketFilter", "CIDRDenyList"):
            self.invalid_prefilter_objects.labels(kind)
        self.api_write_errors = Counter(PREFIX + "api_write_errors_total",
                                        "Failed writes to the API server", ["what"], registry=r)
        self.state_version = Gauge(PREFIX + "state_version", "Current state stream version",
                                   registry=r)
        self.state_objects = Gauge(PREFIX + "state_objects", "Objects in the state",
                                   ["kind"], registry=r)
        self.stream_refused = Counter(PREFIX + "state_stream_refused_total",
                                      "Subscriptions and acks refused (no or wrong certificate, "
                                      "unknown node, expired certificate, not the leader)", ["reason"], registry=r)
        self.csrs = Counter(PREFIX + "csr_decisions_total",
                            "CertificateSigningRequests for membrane.io/agent decided",
                            ["decision"], registry=r)
        self.subscribers = Gauge(PREFIX + "state_subscribers", "Open Subscribe streams",
                                 registry=r)
        self.snapshots_sent = Counter(PREFIX + "state_snapshots_sent_total",
                                      "Snapshots sent to subscribers", registry=r)
        self.deltas_sent = Counter(PREFIX + "state_deltas_sent_total",
                                   "Deltas sent to subscribers", registry=r)
        self.bytes_sent = Counter(PREFIX + "state_bytes_sent_total",
                                  "Serialized StateUpdate bytes sent to subscribers", ["type"],
                                  registry=r)
        self.commit_changes = Histogram(PREFIX + "state_delta_changes",
                                        "Changes per committed delta",
                                        buckets=(1, 2, 5, 10, 100, 1000, 10000), registry=r)
        self.propagation = Histogram(
            PREFIX + "state_propagation_seconds",
            "From a change seen on the API to its ack by every subscribed agent",
            buckets=PROPAGATION_BUCKETS, registry=r)
        self.controller_passes = Histogram(PREFIX + "controller_pass_seconds",
                                           "Duration of one controller pass", registry=r)
