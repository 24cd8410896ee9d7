"""The datapath adapter: the only package that imports ``bcc``.

It compiles ``bpf/bpf_lxc.c`` once per agent start, loads its tc programs,
and gives typed access to the pinned maps (endpoints, conntrack, metrics,
ipcache, CIDR identities, policy, flow event config/stats) and to the flow event ring buffer. Attaching programs to interfaces
is the agent's job (pyroute2, in ``netlinking``), not this package's.

Pure parts (struct layouts, records, conntrack timeouts) import without bcc;
``Datapath`` pulls bcc in on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from membrane.agent.datapath.conntrack import (
    CT_CLOSE_TIMEOUT_S,
    CT_LIFETIME_NONTCP_S,
    CT_LIFETIME_TCP_S,
    CT_SYN_TIMEOUT_S,
    ConntrackEntry,
)
from membrane.agent.datapath.endpoints import EndpointEntry
from membrane.agent.datapath.events import EventConfig, EventStats
from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.agent.datapath.layout import Direction, EventType, FlowEvent, LayoutMismatch, Reason
from membrane.agent.datapath.metrics import MetricSample
from membrane.agent.datapath.node_config import NodeConfig

if TYPE_CHECKING:
    from membrane.agent.datapath.loading import Datapath, DatapathError

__all__ = [
    "CT_CLOSE_TIMEOUT_S",
    "CT_LIFETIME_NONTCP_S",
    "CT_LIFETIME_TCP_S",
    "CT_SYN_TIMEOUT_S",
    "ConntrackEntry",
    "Datapath",
    "DatapathError",
    "Direction",
    "EndpointEntry",
    "EventConfig",
    "EventStats",
    "EventType",
    "FlowEvent",
    "IpcacheEntry",
    "LayoutMismatch",
    "MetricSample",
    "NodeConfig",
    "Reason",
]


def __getattr__(name: str) -> Any:
    # Lazy so that `import membrane.agent.datapath` works where bcc is absent.
    if name in ("Datapath", "DatapathError"):
        from membrane.agent.datapath import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
