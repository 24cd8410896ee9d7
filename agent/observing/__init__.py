"""Flow observability: ring buffer events -> enriched flows -> a bounded ring -> gRPC Observer.

    events.py        struct mb_flow_event mirror and decoder (hot path: struct.unpack)
    enriching.py     EndpointDirectory protocol (the agent implements it), clock, Enricher
    ring.py          FlowRing: bounded, followable
    observer.py      FlowObserver: callback, pump thread, counters, GetFlows query logic
    metrics.py       Prometheus collector (membrane_flows_*, membrane_flow_events_lost_total, ...)
    grpc_serving.py  ObserverServer: the only module here importing grpc (imported lazily)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from membrane.agent.datapath.layout import EventType

from .enriching import EndpointDirectory, EndpointInfo, Enricher, MonotonicClock, NullDirectory, StaticDirectory
from .events import EVENT_SIZE, FlowEventStruct, RawEvent, decode_event, encode_event
from .metrics import FlowMetricsCollector
from .observer import FlowObserver, FlowQuery, Lost, ObserverStatus
from .ring import DEFAULT_CAPACITY, FlowRing

if TYPE_CHECKING:
    from .grpc_serving import ObserverServer

__all__ = [
    "DEFAULT_CAPACITY", "EVENT_SIZE", "EndpointDirectory", "EndpointInfo", "Enricher", "EventType",
    "FlowEventStruct", "FlowMetricsCollector", "FlowObserver", "FlowQuery", "FlowRing", "Lost",
    "MonotonicClock", "NullDirectory", "ObserverServer", "ObserverStatus", "RawEvent", "StaticDirectory",
    "decode_event", "encode_event",
]


def __getattr__(name: str) -> Any:
    # Lazy: importing the observer must not pull grpc into processes that do not serve it.
    if name == "ObserverServer":
        from .grpc_serving import ObserverServer

        return ObserverServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
