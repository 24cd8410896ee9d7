"""Conntrack records, timeouts and expiry (pure; the map walk is in loading).

The timeouts are passed to the C code at compile time; the datapath stores
the one for the flow's current state in ``lifetime_s`` of each entry, and
the agent's GC removes entries idle for longer than that.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Final

from membrane.agent.datapath.encoding import field_to_ip, field_to_port
from membrane.agent.datapath.layout import CtEntry, CtFlag, CtTuple4

# Same values as Cilium's defaults.
CT_LIFETIME_TCP_S: Final = 21600  # established TCP: 6 h
CT_SYN_TIMEOUT_S: Final = 60  # TCP not answered yet
CT_CLOSE_TIMEOUT_S: Final = 10  # TCP after FIN/RST
CT_LIFETIME_NONTCP_S: Final = 60  # UDP, ICMP echo

_PROTOCOL_NAMES: Final = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP", socket.IPPROTO_ICMP: "ICMP"}


def conntrack_cflags() -> list[str]:
    """The -D flags that hand the timeouts to bpf/lib/conntrack.h."""
    return [
        f"-DMB_CT_LIFETIME_TCP={CT_LIFETIME_TCP_S}",
        f"-DMB_CT_SYN_TIMEOUT={CT_SYN_TIMEOUT_S}",
        f"-DMB_CT_CLOSE_TIMEOUT={CT_CLOSE_TIMEOUT_S}",
        f"-DMB_CT_LIFETIME_NONTCP={CT_LIFETIME_NONTCP_S}",
    ]


def is_expired(entry: CtEntry, now_ns: int) -> bool:
    return bool(now_ns - entry.last_seen_ns > entry.lifetime_s * 1_000_000_000)


@dataclass(frozen=True)
class ConntrackEntry:
    """One flow, oriented as its first packet went (tx = initiator's side)."""

    protocol: str  # "TCP", "UDP", "ICMP" or the number
    src: IPv4Address
    dst: IPv4Address
    sport: int  # ICMP echo: the identifier (request side)
    dport: int  # ICMP echo: 0
    flags: tuple[str, ...]  # CtFlag names, e.g. ("SEEN_REPLY", "TX_CLOSING", "POLICY_EGRESS")
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    created_ns: int  # CLOCK_MONOTONIC
    last_seen_ns: int
    lifetime_s: int
    age_s: float  # now - created
    idle_s: float  # now - last seen
    src_identity: int
    dst_identity: int = 0  # 0: unknown (entry written by an older build)

    @classmethod
    def from_structs(cls, key: CtTuple4, value: CtEntry, now_ns: int) -> ConntrackEntry:
        flags = CtFlag(value.flags)
        return cls(
            protocol=_PROTOCOL_NAMES.get(key.nexthdr, str(key.nexthdr)),
            src=field_to_ip(key.saddr),
            dst=field_to_ip(key.daddr),
            sport=field_to_port(key.sport),
            dport=field_to_port(key.dport),
            flags=tuple(f.name for f in CtFlag if f in flags and f.name),
            tx_packets=value.tx_packets,
            tx_bytes=value.tx_bytes,
            rx_packets=value.rx_packets,
            rx_bytes=value.rx_bytes,
            created_ns=value.created_ns,
            last_seen_ns=value.last_seen_ns,
            lifetime_s=value.lifetime_s,
            age_s=max(0, now_ns - value.created_ns) / 1e9,
            idle_s=max(0, now_ns - value.last_seen_ns) / 1e9,
            src_identity=value.src_identity,
            dst_identity=value.dst_identity,
        )

    @property
    def seen_reply(self) -> bool:
        return "SEEN_REPLY" in self.flags

    @property
    def closing(self) -> bool:
        return "TX_CLOSING" in self.flags or "RX_CLOSING" in self.flags

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "src": str(self.src),
            "dst": str(self.dst),
            "sport": self.sport,
            "dport": self.dport,
            "flags": list(self.flags),
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "lifetime_s": self.lifetime_s,
            "age_s": round(self.age_s, 3),
            "idle_s": round(self.idle_s, 3),
            "src_identity": self.src_identity,
            "dst_identity": self.dst_identity,
        }
