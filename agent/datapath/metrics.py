"""Metric samples: the per-CPU (reason, direction) counters, summed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from membrane.agent.datapath.layout import Direction, MetricsKey, MetricsValue, Reason


@dataclass(frozen=True)
class MetricSample:
    reason: str  # Reason name, e.g. "FORWARDED", "DROP_SPOOFED_IP"
    direction: str  # "INGRESS" (towards a pod) or "EGRESS" (from a pod)
    packets: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "direction": self.direction, "packets": self.packets, "bytes": self.bytes}


def _name(enum_cls: type[Reason] | type[Direction], value: int) -> str:
    try:
        return enum_cls(value).name
    except ValueError:  # a newer datapath than this agent: still report it
        return f"UNKNOWN_{value}"


def summed_samples(per_cpu: Iterable[tuple[MetricsKey, Iterable[MetricsValue]]]) -> list[MetricSample]:
    """One sample per key, summed over CPUs, sorted by (reason, direction)."""
    samples = []
    for key, values in per_cpu:
        packets = bytes_ = 0
        for value in values:
            packets += value.packets
            bytes_ += value.bytes
        samples.append((key.reason, key.direction, packets, bytes_))
    return [
        MetricSample(_name(Reason, reason), _name(Direction, direction), packets, bytes_)
        for reason, direction, packets, bytes_ in sorted(samples)
    ]
