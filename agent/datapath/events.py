"""Flow event knobs and accounting (pure): the config the datapath reads, the stats it keeps.

Records themselves are ``layout.FlowEvent`` (``FlowEvent.from_buffer_copy(raw)``);
turning them into flows is the observer's job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from membrane.agent.datapath.layout import EventConfigFlag, EventConfigValue, EventStatsValue

# The datapath's defaults (bpf/lib/events.h), used where the config says 0.
EVENTS_RATE_PER_SEC = 1000  # per CPU
EVENTS_BURST = 2000  # per CPU
EVENTS_AGGREGATE_MS = 1000  # one drop event per flow+reason per second


@dataclass(frozen=True)
class EventConfig:
    enabled: bool = True
    rate_per_sec: int = EVENTS_RATE_PER_SEC
    burst: int = EVENTS_BURST
    aggregate_ms: int = EVENTS_AGGREGATE_MS

    def __post_init__(self) -> None:
        for name in ("rate_per_sec", "burst", "aggregate_ms"):
            if not 0 < getattr(self, name) <= 0xFFFF_FFFF:
                raise ValueError(f"{name} must be a positive u32, got {getattr(self, name)}")

    def to_struct(self) -> EventConfigValue:
        return EventConfigValue(
            flags=0 if self.enabled else EventConfigFlag.DISABLED,
            rate_per_sec=self.rate_per_sec,
            burst=self.burst,
            aggregate_ms=self.aggregate_ms,
        )

    @classmethod
    def from_struct(cls, value: EventConfigValue) -> EventConfig:
        # Zero fields mean "the datapath's default" (a fresh map is all zero).
        return cls(
            enabled=not value.flags & EventConfigFlag.DISABLED,
            rate_per_sec=value.rate_per_sec or EVENTS_RATE_PER_SEC,
            burst=value.burst or EVENTS_BURST,
            aggregate_ms=value.aggregate_ms or EVENTS_AGGREGATE_MS,
        )


@dataclass(frozen=True)
class EventStats:
    """Summed over CPUs. Every event the datapath wanted to emit is in exactly one of the
    first three; ``aggregated`` counts drops folded into a (later) event's ``count``."""

    emitted: int = 0
    rate_limited: int = 0
    ringbuf_full: int = 0
    aggregated: int = 0

    @classmethod
    def summed(cls, per_cpu: Iterable[EventStatsValue]) -> EventStats:
        totals = [0, 0, 0, 0]
        for value in per_cpu:
            for i, name in enumerate(("emitted", "rate_limited", "ringbuf_full", "aggregated")):
                totals[i] += getattr(value, name)
        return cls(*totals)

    @property
    def lost(self) -> int:
        return self.rate_limited + self.ringbuf_full

    def to_json(self) -> dict[str, Any]:
        return {
            "emitted": self.emitted,
            "rate_limited": self.rate_limited,
            "ringbuf_full": self.ringbuf_full,
            "aggregated": self.aggregated,
        }
