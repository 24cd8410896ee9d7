"""Raw bpf(2) calls that bcc 0.26 does not wrap: object info and prog test run.

Kept in one place, on the plain syscall, so there is no dependency on the
ABI of whatever libbpf copy happens to be bundled with libbcc.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Final

BPF_PROG_TEST_RUN: Final = 10
BPF_OBJ_GET_INFO_BY_FD: Final = 15

_SYSCALL_NR_BPF: Final = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfTestRunAttr(ctypes.Structure):
    """The ``test`` member of ``union bpf_attr``."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class BpfObjInfoAttr(ctypes.Structure):
    """The ``info`` member of ``union bpf_attr``."""

    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class BpfMapInfo(ctypes.Structure):
    """Leading part of ``struct bpf_map_info``; the kernel fills what fits."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


def bpf(cmd: int, attr: ctypes.Structure) -> int:
    """Call bpf(2); raise OSError with the kernel's errno on failure."""
    number = _SYSCALL_NR_BPF.get(platform.machine())
    if number is None:
        raise OSError(f"bpf(2) syscall number unknown for {platform.machine()}")
    ret = _libc.syscall(number, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"bpf(cmd={cmd}): {os.strerror(errno)}")
    return int(ret)


def map_info(fd: int) -> BpfMapInfo:
    """The kernel's description of the map behind fd."""
    info = BpfMapInfo()
    attr = BpfObjInfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return info
