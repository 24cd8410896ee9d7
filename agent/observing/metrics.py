"""Prometheus collector for the flow observer (extends the names plan of agent/metrics.py).

Read at scrape time from the observer's plain counters, so decoding a flow costs a dict
increment rather than a labelled prometheus child lookup. Labels are low-cardinality enums
only (type, verdict, direction, reason): never pods, namespaces or addresses.

    membrane_flows_processed_total{type,verdict}       flows decoded (type: drop|policy-verdict|trace)
    membrane_policy_verdicts_total{direction,verdict}  flows a policy decided
    membrane_flow_events_lost_total{reason}            rate_limited | ringbuf_full | decode_error
    membrane_flows_held                                flows in the ring now
    membrane_flows_capacity                            ring size
    membrane_observer_streams                          GetFlows followers connected
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .observer import FlowObserver


class FlowMetricsCollector(Collector):
    def __init__(self, observer: FlowObserver) -> None:
        self.observer = observer

    def collect(self) -> Iterable[Any]:
        obs = self.observer
        processed = CounterMetricFamily("membrane_flows_processed", "Flow events decoded into flows, by type "
                                        "and verdict", labels=["type", "verdict"])
        for (ftype, verdict), n in sorted(dict(obs.processed).items()):
            processed.add_metric([ftype, verdict], n)
        yield processed
        verdicts = CounterMetricFamily("membrane_policy_verdicts", "Flows decided by network policy, by "
                                       "direction and verdict", labels=["direction", "verdict"])
        for (direction, verdict), n in sorted(dict(obs.policy_verdicts).items()):
            verdicts.add_metric([direction, verdict], n)
        yield verdicts
        lost = CounterMetricFamily("membrane_flow_events_lost", "Flow events that never became flows, by reason",
                                   labels=["reason"])
        for reason, n in sorted(dict(obs.lost).items()):
            lost.add_metric([reason], n)
        yield lost
        yield GaugeMetricFamily("membrane_flows_held", "Flows held in the observer's ring", value=obs.ring.held)
        yield GaugeMetricFamily("membrane_flows_capacity", "Size of the observer's flow ring",
                                value=obs.ring.capacity)
        yield GaugeMetricFamily("membrane_observer_streams", "GetFlows streams following new flows",
                                value=obs.streams)
