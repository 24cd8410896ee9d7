"""A minimal rtnetlink client for the CNI hot path: plain `socket` + `struct`, no pyroute2.

pyroute2 0.9 runs an asyncio loop per call and forks a child for every `NetNS`; a pod ADD
made ~20 such calls (~60 ms of agent time). This module builds the few messages an ADD/DEL
needs by hand and sends each side's messages as one batch (the kernel processes them in
order and answers each with an ACK), so wiring a pod takes a handful of syscalls.

A socket acts on the network namespace it was created in: `RtnlSocket()` made in a thread
that joined a pod's namespace (netlinking.pod_socket) configures that pod. Not thread-safe:
one socket per thread at a time (`SocketPool` for the agent's own namespace).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address

NETLINK_ROUTE = 0
# message types
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE = 24
RTM_NEWNEIGH = 28
RTM_NEWQDISC = 36
RTM_NEWTFILTER = 44
# flags
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
ADD = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
CHANGE = NLM_F_REQUEST | NLM_F_ACK
# attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO, IFLA_IFALIAS, IFLA_NET_NS_FD = 1, 3, 4, 18, 20, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, VETH_INFO_PEER = 1, 2, 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
NDA_DST, NDA_LLADDR = 1, 2
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_BPF_CLASSID, TCA_BPF_FD, TCA_BPF_NAME, TCA_BPF_FLAGS = 3, 6, 7, 8
TCA_BPF_FLAG_ACT_DIRECT = 1
# values
IFF_UP = 0x1
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1
NUD_PERMANENT = 0x80
TC_H_CLSACT = 0xFFFFFFF1
CLSACT_HANDLE = 0xFFFF0000
ETH_P_ALL = 0x0003

_HDR = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index


class RtnlError(OSError):
    """The kernel refused a request: errno and what was asked."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, f"{what}: {os.strerror(code)}")
        self.code = code


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, seq, body) of each netlink message in one datagram; stops at a malformed header."""
    offset = 0
    while offset + _HDR.size <= len(data):
        length, kind, _flags, seq, _pid = _HDR.unpack_from(data, offset)
        if length < _HDR.size:
            return
        yield kind, seq, data[offset + _HDR.size:offset + length]
        offset += (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _str(kind: int, value: str) -> bytes:
    return _attr(kind, value.encode() + b"\0")


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFO.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _mac(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


def _attrs(data: bytes, offset: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return found


class Request:
    """One message of a batch; `what` names it in errors, `ok` lists tolerated errnos."""

    __slots__ = ("type", "flags", "body", "what", "ok")

    def __init__(self, type_: int, flags: int, body: bytes, what: str, ok: Iterable[int] = ()) -> None:
        self.type, self.flags, self.body, self.what, self.ok = type_, flags, body, what, tuple(ok)


class RtnlSocket:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def batch(self, requests: list[Request]) -> list[bytes | None]:
        """Send all requests at once; the kernel handles them in order. Returns each GET's reply
        (None for the others); raises the first refusal not listed in the request's `ok`."""
        wire = []
        pending: dict[int, int] = {}
        for i, req in enumerate(requests):
            self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
            pending[self.seq] = i
            wire.append(_HDR.pack(_HDR.size + len(req.body), req.type, req.flags, self.seq, 0) + req.body)
        self.sock.sendall(b"".join(wire))
        replies: list[bytes | None] = [None] * len(requests)
        failure: RtnlError | None = None
        while pending:
            for kind, seq, body in _messages(self.sock.recv(1 << 16)):
                index = pending.get(seq)
                if index is not None:
                    req = requests[index]
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", body)[0]
                        del pending[seq]
                        if code and code not in req.ok and failure is None:
                            failure = RtnlError(code, req.what)
                    elif kind != NLMSG_DONE and not req.flags & NLM_F_ACK:
                        replies[index] = body
                        del pending[seq]
        if failure is not None:
            raise failure
        return replies

    def dump(self, request: Request) -> list[bytes]:
        """One dump request: the body of every message of its (multipart) answer."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        seq = self.seq
        self.sock.sendall(_HDR.pack(_HDR.size + len(request.body), request.type, request.flags, seq, 0)
                          + request.body)
        found: list[bytes] = []
        while True:
            for kind, got, body in _messages(self.sock.recv(1 << 16)):
                if got == seq:
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", body)[0]
                        raise RtnlError(code or errno.EIO, request.what)
                    found.append(body)

    # --- requests -----------------------------------------------------------------
    @staticmethod
    def get_link(name: str) -> Request:
        return Request(RTM_GETLINK, NLM_F_REQUEST, _ifinfo() + _str(IFLA_IFNAME, name), f"get link {name}")

    @staticmethod
    def parse_link(reply: bytes) -> tuple[int, str]:
        """(ifindex, MAC) of an RTM_NEWLINK reply."""
        index = _IFINFO.unpack_from(reply)[2]
        mac = _attrs(reply, _IFINFO.size).get(IFLA_ADDRESS, b"")
        return index, ":".join(f"{b:02x}" for b in mac)

    def link(self, name: str) -> tuple[int, str] | None:
        """(ifindex, MAC) of a link by name, None when there is none: one round trip, no dump."""
        try:
            (reply,) = self.batch([self.get_link(name)])
        except RtnlError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        assert reply is not None
        return self.parse_link(reply)

    @staticmethod
    def dump_ipv4_addresses() -> Request:
        return Request(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0),
                       "dump IPv4 addresses")

    @staticmethod
    def parse_address(reply: bytes) -> IPv4Address | None:
        """IFA_ADDRESS of an RTM_NEWADDR message (the peer's on a point-to-point address, as
        `ip addr` shows after `peer`); None for another family."""
        if reply[0] != socket.AF_INET:
            return None
        found = _attrs(reply, _IFADDR.size).get(IFA_ADDRESS)
        return IPv4Address(found) if found is not None and len(found) == 4 else None

    @staticmethod
    def add_veth(name: str, peer: str, peer_netns_fd: int, mtu: int) -> Request:
        peer_info = _ifinfo() + _str(IFLA_IFNAME, peer) + _u32(IFLA_MTU, mtu) + _u32(IFLA_NET_NS_FD, peer_netns_fd)
        info = _str(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, peer_info))
        body = _ifinfo() + _str(IFLA_IFNAME, name) + _u32(IFLA_MTU, mtu) + _attr(IFLA_LINKINFO, info)
        return Request(RTM_NEWLINK, ADD, body, f"add veth {name} (peer {peer})")

    @staticmethod
    def set_alias(index: int, alias: str) -> Request:
        return Request(RTM_SETLINK, CHANGE, _ifinfo(index) + _str(IFLA_IFALIAS, alias), f"set alias of link {index}")

    @staticmethod
    def set_up(index: int = 0, name: str | None = None) -> Request:
        body = _ifinfo(index, IFF_UP, IFF_UP) + (_str(IFLA_IFNAME, name) if name is not None else b"")
        return Request(RTM_SETLINK, CHANGE, body, f"set link {name or index} up")

    @staticmethod
    def del_link(name: str) -> Request:
        return Request(RTM_DELLINK, CHANGE, _ifinfo() + _str(IFLA_IFNAME, name), f"delete link {name}")

    @staticmethod
    def add_address(index: int, address: IPv4Address, prefixlen: int) -> Request:
        body = struct.pack("=BBBBI", socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index) + \
            _attr(IFA_LOCAL, address.packed) + _attr(IFA_ADDRESS, address.packed)
        return Request(RTM_NEWADDR, ADD, body, f"add address {address}/{prefixlen}")

    @staticmethod
    def replace_route(dst: IPv4Address, dst_len: int, oif: int, gateway: IPv4Address | None = None) -> Request:
        scope = RT_SCOPE_LINK if gateway is None else RT_SCOPE_UNIVERSE
        body = struct.pack("=BBBBBBBBI", socket.AF_INET, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
                           RTN_UNICAST, 0)
        if dst_len:
            body += _attr(RTA_DST, dst.packed)
        if gateway is not None:
            body += _attr(RTA_GATEWAY, gateway.packed)
        body += _u32(RTA_OIF, oif)
        return Request(RTM_NEWROUTE, REPLACE, body, f"replace route {dst}/{dst_len}")

    @staticmethod
    def replace_neighbour(index: int, address: IPv4Address, mac: str) -> Request:
        body = struct.pack("=BxxxiHBB", socket.AF_INET, index, NUD_PERMANENT, 0, 0) + \
            _attr(NDA_DST, address.packed) + _attr(NDA_LLADDR, _mac(mac))
        return Request(RTM_NEWNEIGH, REPLACE, body, f"replace neighbour {address}")

    @staticmethod
    def add_clsact(index: int) -> Request:
        body = struct.pack("=BxxxiIII", socket.AF_UNSPEC, index, CLSACT_HANDLE, TC_H_CLSACT, 0) + \
            _str(TCA_KIND, "clsact")
        return Request(RTM_NEWQDISC, ADD, body, f"add clsact on {index}", ok=(errno.EEXIST,))

    @staticmethod
    def replace_bpf_filter(index: int, parent: int, handle: int, prio: int, fd: int, name: str) -> Request:
        """tc filter replace dev <index> <parent> prio <prio> handle <handle> bpf da fd <fd>."""
        info = (prio << 16) | socket.htons(ETH_P_ALL)
        options = _u32(TCA_BPF_CLASSID, 1) + _u32(TCA_BPF_FD, fd) + _str(TCA_BPF_NAME, name) + \
            _u32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT)
        body = struct.pack("=BxxxiIII", socket.AF_UNSPEC, index, handle, parent, info) + \
            _str(TCA_KIND, "bpf") + _attr(TCA_OPTIONS, options)
        return Request(RTM_NEWTFILTER, REPLACE, body, f"replace bpf filter {name} on {index}")


class SocketPool:
    """Sockets of the agent's own namespace, one per concurrent user; a socket that saw an
    error other than the kernel's refusal is dropped (its replies might still be queued)."""

    def __init__(self) -> None:
        self._idle: list[RtnlSocket] = []
        self._lock = threading.Lock()

    def batch(self, requests: list[Request]) -> list[bytes | None]:
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        if sock is None:
            sock = RtnlSocket()
        try:
            replies = sock.batch(requests)
        except RtnlError:
            self._put(sock)
            raise
        except BaseException:
            sock.close()
            raise
        self._put(sock)
        return replies

    def dump(self, request: Request) -> list[bytes]:
        with self._lock:
            sock = self._idle.pop() if self._idle else None
        if sock is None:
            sock = RtnlSocket()
        try:
            found = sock.dump(request)
        except BaseException:
            sock.close()  # the rest of a dump might still be queued on it
            raise
        self._put(sock)
        return found

    def link(self, name: str) -> tuple[int, str] | None:
        try:
            (reply,) = self.batch([RtnlSocket.get_link(name)])
        except RtnlError as exc:
            if exc.code == errno.ENODEV:
                return None
            raise
        assert reply is not None
        return RtnlSocket.parse_link(reply)

    def _put(self, sock: RtnlSocket) -> None:
        with self._lock:
            if len(self._idle) < 8:
                self._idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()
