"""The node's side of the VXLAN overlay: device, program, datapath config, pod MTU.

Cross-node pod traffic leaves through one VXLAN device per node in external
(collect-metadata) mode: ``from_container`` stamps each packet with the remote
node (from the ipcache) and the source pod's identity as VNI, and redirects it
to the device; ``from_overlay`` at the device's tc ingress receives the other
nodes' packets, from nodes only and for what they own (docs/trust-model.md).
What the node's stack itself routes to other nodes' pods (the cluster CIDR's route
points at the device: kube-proxy's DNAT to a remote backend, the node's own
connections) gets its tunnel key from ``to_overlay`` at the device's tc egress. This module
only wires that up at agent start; which remote prefixes live behind which node, and which
addresses are nodes, is the policy manager's ipcache business.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Protocol

from .config import AgentConfig
from .datapath.node_config import NodeConfig

# Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14): what encapsulation adds.
VXLAN_OVERHEAD = 50
DEFAULT_UNDERLAY_MTU = 1500  # a node without a default route (bare lab node): assume Ethernet
PROGRAM = "from_overlay"
EGRESS_PROGRAM = "to_overlay"


log = logging.getLogger("membrane.agent")

class OverlayNetlink(Protocol):
    def underlay(self, node_ip: IPv4Address | None) -> tuple[IPv4Address | None, int | None]: ...
    def ensure_vxlan(self, name: str, port: int, mtu: int) -> int: ...
    def attach_ingress(self, ifindex: int, program: tuple[int, str]) -> None: ...
    def attach_egress(self, ifindex: int, program: tuple[int, str]) -> None: ...
    def route_to_tunnel(self, ifindex: int, cidr: IPv4Network, source: IPv4Address | None) -> None: ...
    def host_addresses(self) -> list[str]: ...


class OverlayDatapath(Protocol):
    def program(self, name: str) -> tuple[int, str]: ...
    def set_node_config(self, config: NodeConfig) -> None: ...


def pod_mtu(configured: int | None, underlay_mtu: int, tunnel: bool) -> int:
    """The pod MTU: as configured, else what lets a full pod packet cross the underlay whole."""
    if configured is not None:
        return configured
    return underlay_mtu - VXLAN_OVERHEAD if tunnel else underlay_mtu


@dataclass(frozen=True)
class Overlay:
    """What `setup` found and made (for status and logs)."""

    mode: str  # "vxlan" or "disabled"
    device: str | None
    ifindex: int
    node_ip: IPv4Address | None
    underlay_mtu: int
    pod_mtu: int

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "device": self.device, "ifindex": self.ifindex,
                "node_ip": str(self.node_ip) if self.node_ip else None, "underlay_mtu": self.underlay_mtu,
                "pod_mtu": self.pod_mtu}


def plan(config: AgentConfig, netlink: OverlayNetlink) -> Overlay:
    """What the overlay will be (underlay address and MTU, pod MTU), touching nothing: pods
    restored or wired before `setup` need the pod MTU."""
    node_ip, found_mtu = netlink.underlay(config.node_ip)
    underlay_mtu = found_mtu or DEFAULT_UNDERLAY_MTU
    tunnel = config.tunnel == "vxlan"
    mtu = pod_mtu(config.mtu, underlay_mtu, tunnel)
    return Overlay("vxlan" if tunnel else "disabled", config.tunnel_device if tunnel else None, 0, node_ip,
                   underlay_mtu, mtu)


def setup(config: AgentConfig, planned: Overlay, netlink: OverlayNetlink, datapath: OverlayDatapath) -> Overlay:
    """Create the VXLAN device if missing, tell the datapath its ifindex and the tunnel port,
    attach `from_overlay`.

    Call it once the ipcache holds the nodes again (after the policy resync): the program accepts
    VXLAN only from ipcache entries flagged NODE, so attached before them it would refuse every
    node. Idempotent (agent restarts): the device is kept, the program replaced atomically, and the
    config entry rewritten with the same ifindex, so cross-node flows never stop.
    """
    if planned.mode != "vxlan":
        datapath.set_node_config(NodeConfig(0, planned.node_ip))
        return planned
    ifindex = netlink.ensure_vxlan(config.tunnel_device, config.tunnel_port, planned.underlay_mtu - VXLAN_OVERHEAD)
    # The port first: from_container refuses pods' datagrams to it before the device exists.
    datapath.set_node_config(NodeConfig(ifindex, planned.node_ip, config.tunnel_port))
    netlink.attach_ingress(ifindex, datapath.program(PROGRAM))
    netlink.attach_egress(ifindex, datapath.program(EGRESS_PROGRAM))
    stack_cidr = stack_route(config)
    if stack_cidr is not None:
        # The node's address as the route's preferred source only where the node holds it: the
        # kernel refuses (EINVAL) a prefsrc that is no local address (a node IP given by the
        # downward API before the address is up, a lab node without an uplink); the stack then
        # picks the source itself.
        local = planned.node_ip is not None and str(planned.node_ip) in netlink.host_addresses()
        if planned.node_ip is not None and not local:
            log.warning("node IP is not an address of this node: the route into the tunnel has no preferred source",
                        extra={"fields": {"node_ip": str(planned.node_ip), "cidr": str(stack_cidr)}})
        netlink.route_to_tunnel(ifindex, stack_cidr, planned.node_ip if local else None)
    return dataclasses.replace(planned, ifindex=ifindex)


def stack_route(config: AgentConfig) -> IPv4Network | None:
    """What the node's own stack routes into the tunnel: the cluster CIDR, when it is more than
    this node's pod CIDR. Pods' packets to other nodes never need it (from_container sends
    them); what the stack itself forwards does: a ClusterIP connection kube-proxy DNATed to a
    backend on another node, the node's own connections to remote pods (to_overlay gives them
    their tunnel key). Local pods keep their /32 routes, which are longer."""
    cidr = config.cluster_cidr
    if cidr is None or (config.pod_cidr is not None and cidr == config.pod_cidr):
        return None
    return cidr
