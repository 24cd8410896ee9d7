"""Attach the socket hooks (bpf/bpf_sock.c) to a cgroup v2 directory, replacing our own older
programs in place.

An attachment to a cgroup outlives the agent (the kernel holds it until it is detached or the
cgroup is removed), which is what keeps Service traffic translated across an agent restart.
A restarted agent therefore *replaces* the program it finds attached under the same name
(BPF_F_REPLACE: atomic, no connect() ever runs without a hook) and attaches with
BPF_F_ALLOW_MULTI, so programs of others on the same cgroup (systemd's, another tool's) stay.

Raw bpf(2) calls (bcc has no BPF_F_REPLACE nor BPF_PROG_QUERY).
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from membrane.agent.datapath.syscalls import BpfObjInfoAttr, bpf

BPF_PROG_ATTACH: Final = 8
BPF_PROG_DETACH: Final = 9
BPF_PROG_GET_FD_BY_ID: Final = 13
BPF_OBJ_GET_INFO_BY_FD: Final = 15
BPF_PROG_QUERY: Final = 16

BPF_F_ALLOW_MULTI: Final = 0x2
BPF_F_REPLACE: Final = 0x4

# enum bpf_attach_type
CGROUP_INET4_CONNECT: Final = 10
CGROUP_UDP4_SENDMSG: Final = 14
CGROUP_UDP4_RECVMSG: Final = 19
CGROUP_INET4_GETPEERNAME: Final = 29

# program (function name in bpf_sock.c) -> its attach type
SOCK_HOOKS: Final = {
    "mb_sock4_connect": CGROUP_INET4_CONNECT,
    "mb_sock4_sendmsg": CGROUP_UDP4_SENDMSG,
    "mb_sock4_recvmsg": CGROUP_UDP4_RECVMSG,
    "mb_sock4_getpeername": CGROUP_INET4_GETPEERNAME,
}
_KERNEL_NAME_LEN: Final = 15  # BPF_OBJ_NAME_LEN - 1: the kernel keeps this much of a program's name


class CgroupAttachError(RuntimeError):
    """The cgroup is missing, is no cgroup v2 directory, or refused the program."""


class _AttachAttr(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("replace_bpf_fd", ctypes.c_uint32), ("_rest", ctypes.c_uint32 * 4)]


class _QueryAttr(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32), ("_rest", ctypes.c_uint32 * 9)]


class _GetFdAttr(ctypes.Structure):
    _fields_ = [("prog_id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class _ProgInfo(ctypes.Structure):
    """Leading part of ``struct bpf_prog_info`` (up to the name)."""

    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64), ("name", ctypes.c_char * 16)]


@dataclass(frozen=True)
class Attached:
    name: str
    prog_id: int


def _prog_name(fd: int) -> str:
    info = _ProgInfo()
    bpf(BPF_OBJ_GET_INFO_BY_FD, BpfObjInfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                               info=ctypes.addressof(info)))
    return str(info.name.decode(errors="replace"))


def attached(cgroup_fd: int, attach_type: int) -> list[Attached]:
    """Programs attached directly to the cgroup for one attach type."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _QueryAttr(target_fd=cgroup_fd, attach_type=attach_type, prog_ids=ctypes.addressof(ids), prog_cnt=64)
    bpf(BPF_PROG_QUERY, attr)
    found = []
    for prog_id in ids[:attr.prog_cnt]:
        try:
            fd = bpf(BPF_PROG_GET_FD_BY_ID, _GetFdAttr(prog_id=prog_id))
        except OSError:
            continue  # detached meanwhile
        try:
            found.append(Attached(_prog_name(fd), int(prog_id)))
        finally:
            os.close(fd)
    return found


def attach_sock_hooks(cgroup: Path, program_fds: dict[str, int]) -> dict[str, str]:
    """Attach each socket hook to the cgroup, replacing our program of the same name in place.
    Returns name -> "attached" | "replaced"."""
    try:
        cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise CgroupAttachError(f"--cgroup-root {cgroup}: {exc.strerror}") from None
    outcome = {}
    try:
        for name, attach_type in SOCK_HOOKS.items():
            prog_fd = program_fds[name]
            ours = [a for a in _query(cgroup, cgroup_fd, attach_type) if a.name == name[:_KERNEL_NAME_LEN]]
            try:
                if ours:
                    old_fd = bpf(BPF_PROG_GET_FD_BY_ID, _GetFdAttr(prog_id=ours[0].prog_id))
                    try:
                        bpf(BPF_PROG_ATTACH, _AttachAttr(target_fd=cgroup_fd, attach_bpf_fd=prog_fd,
                                                         attach_type=attach_type,
                                                         attach_flags=BPF_F_ALLOW_MULTI | BPF_F_REPLACE,
                                                         replace_bpf_fd=old_fd))
                    finally:
                        os.close(old_fd)
                    for extra in ours[1:]:  # a crash between attach and detach of an older build
                        _detach_id(cgroup_fd, attach_type, extra.prog_id)
                    outcome[name] = "replaced"
                else:
                    bpf(BPF_PROG_ATTACH, _AttachAttr(target_fd=cgroup_fd, attach_bpf_fd=prog_fd,
                                                     attach_type=attach_type, attach_flags=BPF_F_ALLOW_MULTI))
                    outcome[name] = "attached"
            except OSError as exc:
                raise CgroupAttachError(f"attaching {name} to {cgroup}: {exc.strerror}") from None
    finally:
        os.close(cgroup_fd)
    return outcome


def detach_sock_hooks(cgroup: Path) -> int:
    """Detach every program of ours (by name) from the cgroup; returns how many."""
    cgroup_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    removed = 0
    try:
        for name, attach_type in SOCK_HOOKS.items():
            for found in _query(cgroup, cgroup_fd, attach_type):
                if found.name == name[:_KERNEL_NAME_LEN]:
                    removed += _detach_id(cgroup_fd, attach_type, found.prog_id)
    finally:
        os.close(cgroup_fd)
    return removed


def _query(cgroup: Path, cgroup_fd: int, attach_type: int) -> list[Attached]:
    try:
        return attached(cgroup_fd, attach_type)
    except OSError as exc:
        raise CgroupAttachError(f"--cgroup-root {cgroup} is no cgroup v2 directory: {exc.strerror}") from None


def _detach_id(cgroup_fd: int, attach_type: int, prog_id: int) -> int:
    try:
        fd = bpf(BPF_PROG_GET_FD_BY_ID, _GetFdAttr(prog_id=prog_id))
    except OSError:
        return 0
    try:
        bpf(BPF_PROG_DETACH, _AttachAttr(target_fd=cgroup_fd, attach_bpf_fd=fd, attach_type=attach_type))
        return 1
    except OSError as exc:
        if exc.errno == errno_codes.ENOENT:
            return 0
        raise
    finally:
        os.close(fd)
