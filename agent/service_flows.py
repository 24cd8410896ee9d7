"""Which Service a flow went through (flow enrichment, agent side).

The socket hooks translate at connect()/sendmsg() and emit a TRANSLATION event: the frontend
(source address and port of the event), the backend (its destination), the frontend's id
(`rule_ref`) and the client's network namespace (`netns_cookie`). The packets of that connection
carry the backend's address only, so the translation event is what names the Service: the
client's namespace is mapped to its local pod's address (each local endpoint's netns cookie,
read once, SO_NETNS_COOKIE), and (client, backend, port, protocol) is remembered for `ttl_s`, so
the connection's flows, both ways, name the Service and the translation too. A pod reaching
the same backend directly within that window is named as well: its packets cannot be told apart.
Connections of the node's own processes get the translation event only (their source address is
the stack's choice). The per-packet path on the node's devices (NodePort, externalIP,
LoadBalancer) emits the same event when it creates a flow's NAT entries, with the device in
`ifindex` and the client's address (not a namespace) in `netns_cookie`'s low 32 bits.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Final

from .lb_syncing import LbQueries
from .observing.events import EventType, RawEvent

SO_NETNS_COOKIE: Final = 71  # Linux 5.14
_REFRESH_S: Final = 1.0  # at most one re-read of the endpoints' cookies a second (unknown cookie)


def netns_cookie() -> int:
    """The cookie of the calling thread's network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")


def _device_client(value: int) -> str:
    """The client address a device hook's TRANSLATION event carries (network order, low 32 bits)."""
    return socket.inet_ntoa((value & 0xFFFFFFFF).to_bytes(4, "little"))


class ServiceFlows:
    def __init__(self, lb: LbQueries, read_clients: Callable[[], dict[int, str]], ttl_s: float = 300.0,
                 max_entries: int = 65536) -> None:
        self.lb = lb
        self.read_clients = read_clients  # netns cookie -> pod address, of the local endpoints
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clients: dict[int, str] = {}
        self._read_at = -_REFRESH_S
        self._recent: dict[tuple[str, str, int, int], tuple[str, str, float]] = {}

    def _client(self, cookie: int) -> str | None:
        found = self._clients.get(cookie)
        now = time.monotonic()
        if found is None and cookie and now - self._read_at >= _REFRESH_S:
            self._read_at = now
            self._clients = self.read_clients()
            found = self._clients.get(cookie)
        return found

    def describe(self, ev: RawEvent) -> tuple[str, str] | None:
        """(service, translation) of an event, or None."""
        if ev.type == EventType.TRANSLATION:
            info = self.lb.frontend_info(ev.rule_ref)
            if info is None:
                return None
            refused = ev.daddr == "0.0.0.0"
            translation = f"{ev.saddr}:{ev.sport} -> " + ("refused" if refused else f"{ev.daddr}:{ev.dport}")
            client = None if refused else (
                _device_client(ev.netns_cookie) if ev.ifindex else self._client(ev.netns_cookie))
            if client is not None:
                if len(self._recent) >= self.max_entries:
                    self._expire(time.monotonic(), everything=True)
                self._recent[(client, ev.daddr, ev.dport, ev.nexthdr)] = (info.service, translation,
                                                                          time.monotonic() + self.ttl_s)
            return info.service, translation
        if not self._recent:
            return None
        hit = self._recent.get((ev.saddr, ev.daddr, ev.dport, ev.nexthdr)) or \
            self._recent.get((ev.daddr, ev.saddr, ev.sport, ev.nexthdr))
        if hit is None:
            return None
        if hit[2] < time.monotonic():
            self._expire(time.monotonic())
            return None
        return hit[0], hit[1]

    def _expire(self, now: float, everything: bool = False) -> None:
        self._recent = {} if everything else {k: v for k, v in self._recent.items() if v[2] >= now}
