"""The node config record: what the datapath knows about its own node (pure conversions).

One entry in an array map, written by the agent at start: the VXLAN device
pyroute2 created (its ifindex is where ``from_container`` redirects pod
traffic for other nodes) and the node's underlay address.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from membrane.agent.datapath.encoding import field_to_ip, ip_to_field
from membrane.agent.datapath.layout import NodeConfigValue


@dataclass(frozen=True)
class NodeConfig:
    tunnel_ifindex: int = 0  # 0 = no tunnel: the datapath drops tunnelled destinations (NO_ROUTE)
    node_ip: IPv4Address | None = None

    def to_struct(self) -> NodeConfigValue:
        ip = ip_to_field(self.node_ip) if self.node_ip is not None else 0
        return NodeConfigValue(tunnel_ifindex=self.tunnel_ifindex, node_ip=ip)

    @classmethod
    def from_struct(cls, value: NodeConfigValue) -> NodeConfig:
        return cls(value.tunnel_ifindex, field_to_ip(value.node_ip) if value.node_ip else None)
