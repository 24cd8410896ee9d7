"""Connected UDP sockets of a backend that left its Service are closed (SOCK_DESTROY).

The socket hooks translate a connected UDP socket once, at connect(): its datagrams go to that
backend until the socket is closed. When the backend leaves the Service (its pod terminates,
is no longer ready), such a socket would keep sending into nothing: kube-proxy's stale UDP
conntrack problem at the socket. So, as Cilium does, the agent destroys those sockets
(sock_diag SOCK_DESTROY, CONFIG_INET_DIAG_DESTROY): the kernel disconnects the socket with
ECONNABORTED (a send on it then fails with EDESTADDRREQ), and the application connects anew,
which picks a live backend. Only sockets the load balancer translated to that
backend are destroyed (their cookie is in mb_lb4_sock_v1 with that backend); a socket connected
to the pod's address directly is left alone. Runs in each network namespace given (local pods'
and the node's), off the packet path.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address
from typing import Final

NETLINK_SOCK_DIAG: Final = 4
SOCK_DIAG_BY_FAMILY: Final = 20
SOCK_DESTROY: Final = 21
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLM_F_DUMP: Final = 0x300
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
_HDR: Final = struct.Struct("=IHHII")
_SOCKID: Final = struct.Struct(">HH16s16s")  # sport, dport, src, dst (network order), then if, cookie (host)
_REQ_HEAD: Final = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
_MSG_HEAD: Final = struct.Struct("=BBBB")  # family, state, timer, retrans


def _sockid(raw: bytes) -> tuple[int, int, bytes, bytes, int, int]:
    sport, dport, src, dst = _SOCKID.unpack_from(raw, 0)
    ifindex, cookie = struct.unpack_from("=IQ", raw, 36)
    return sport, dport, src, dst, ifindex, cookie


def udp_peers(sock: socket.socket) -> list[tuple[bytes, IPv4Address, int, int]]:
    """Every IPv4 UDP socket of the namespace: (its raw sockid, peer address, peer port, cookie)."""
    req = _REQ_HEAD.pack(socket.AF_INET, socket.IPPROTO_UDP, 0, 0, 0xFFFFFFFF) + bytes(48)
    sock.send(_HDR.pack(_HDR.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
    found: list[tuple[bytes, IPv4Address, int, int]] = []
    while True:
        data = sock.recv(1 << 16)
        offset = 0
        while offset < len(data):
            length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, offset)
            if kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR:
                raise OSError(-struct.unpack_from("=i", data, offset + 16)[0], "sock_diag dump failed")
            raw = data[offset + 16 + 4:offset + 16 + 4 + 48]
            _sport, dport, _src, dst, _ifindex, cookie = _sockid(raw)
            if dport:
                found.append((raw, IPv4Address(dst[:4]), dport, cookie))
            offset += (length + 3) & ~3
        if not data:
            return found


def destroy(sock: socket.socket, raw_id: bytes) -> bool:
    req = _REQ_HEAD.pack(socket.AF_INET, socket.IPPROTO_UDP, 0, 0, 0xFFFFFFFF) + raw_id
    sock.send(_HDR.pack(_HDR.size + len(req), SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, 2, 0) + req)
    data = sock.recv(4096)
    _length, kind, _flags, _seq, _pid = _HDR.unpack_from(data, 0)
    return bool(kind == NLMSG_ERROR and struct.unpack_from("=i", data, 16)[0] == 0)


def terminate_udp(backends: Iterable[tuple[IPv4Address, int]],
                  translated: Callable[[int, IPv4Address, int], bool]) -> int:
    """In the calling thread's namespace: destroy connected UDP sockets to one of `backends`
    that the load balancer translated (`translated(cookie, address, port)`). Returns how many."""
    wanted = set(backends)
    if not wanted:
        return 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
        victims = [raw for raw, peer, port, cookie in udp_peers(sock)
                   if (peer, port) in wanted and translated(cookie, peer, port)]
        return sum(destroy(sock, raw) for raw in victims)
