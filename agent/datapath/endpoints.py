"""Endpoint records: what the datapath knows about each local pod."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from membrane.agent.datapath.encoding import bytes_to_mac, ip_to_field, mac_to_bytes
from membrane.agent.datapath.layout import EndpointInfo, EndpointKey, MacBytes


@dataclass(frozen=True)
class EndpointEntry:
    """Value of the endpoints map for one pod address."""

    ifindex: int  # host-side veth, in the node netns
    endpoint_id: int  # u16
    identity: int  # security identity (24 bits used)
    pod_mac: str  # "aa:bb:cc:dd:ee:ff", eth0 inside the pod
    host_mac: str  # the host-side veth
    flags: int = 0  # layout.EndpointFlag

    def __post_init__(self) -> None:
        if not 0 <= self.endpoint_id <= 0xFFFF:
            raise ValueError(f"endpoint_id {self.endpoint_id} does not fit in 16 bits")
        if not 0 <= self.identity <= 0xFFFFFF:
            raise ValueError(f"identity {self.identity} does not fit in 24 bits")
        mac_to_bytes(self.pod_mac)
        mac_to_bytes(self.host_mac)

    def to_struct(self) -> EndpointInfo:
        return EndpointInfo(
            ifindex=self.ifindex,
            sec_identity=self.identity,
            endpoint_id=self.endpoint_id,
            flags=self.flags,
            pod_mac=MacBytes(*mac_to_bytes(self.pod_mac)),
            host_mac=MacBytes(*mac_to_bytes(self.host_mac)),
        )

    @classmethod
    def from_struct(cls, info: EndpointInfo) -> EndpointEntry:
        return cls(
            ifindex=info.ifindex,
            endpoint_id=info.endpoint_id,
            identity=info.sec_identity,
            pod_mac=bytes_to_mac(info.pod_mac),
            host_mac=bytes_to_mac(info.host_mac),
            flags=info.flags,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ifindex": self.ifindex,
            "endpoint_id": self.endpoint_id,
            "identity": self.identity,
            "pod_mac": self.pod_mac,
            "host_mac": self.host_mac,
            "flags": self.flags,
        }


def endpoint_key(ip: IPv4Address) -> EndpointKey:
    return EndpointKey(ip4=ip_to_field(ip))
