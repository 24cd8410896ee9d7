"""The node config record: what the datapath knows about its own node (pure conversions).

One entry in an array map, written by the agent at start: the VXLAN device
pyroute2 created (its ifindex is where ``from_container`` redirects pod
traffic for other nodes), the node's underlay address, and the tunnel's UDP
port (``from_container`` drops what pods send to it: only nodes speak VXLAN).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from membrane.agent.datapath.encoding import field_to_ip, field_to_port, ip_to_field, port_to_field
from membrane.agent.datapath.layout import NodeConfigValue


@dataclass(frozen=True)
class NodeConfig:
    tunnel_ifindex: int = 0  # 0 = no tunnel: the datapath drops tunnelled destinations (NO_ROUTE)
    node_ip: IPv4Address | None = None
    tunnel_port: int = 0  # UDP port of the overlay; 0 = no tunnel: pods' UDP is not checked against it

    def __post_init__(self) -> None:
        if not 0 <= self.tunnel_port <= 0xFFFF:
            raise ValueError(f"tunnel_port {self.tunnel_port} is not a UDP port")

    def to_struct(self) -> NodeConfigValue:
        ip = ip_to_field(self.node_ip) if self.node_ip is not None else 0
        return NodeConfigValue(tunnel_ifindex=self.tunnel_ifindex, node_ip=ip,
                               tunnel_port=port_to_field(self.tunnel_port))

    @classmethod
    def from_struct(cls, value: NodeConfigValue) -> NodeConfig:
        return cls(value.tunnel_ifindex, field_to_ip(value.node_ip) if value.node_ip else None,
                   field_to_port(value.tunnel_port))
