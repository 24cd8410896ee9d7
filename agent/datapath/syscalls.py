"""Raw bpf(2) calls that bcc 0.26 does not wrap: object info, prog test run, batch map ops.

Kept in one place, on the plain syscall, so there is no dependency on the
ABI of whatever libbpf copy happens to be bundled with libbcc.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
import platform
from typing import Final

BPF_MAP_GET_NEXT_KEY: Final = 4
BPF_MAP_LOOKUP_BATCH: Final = 24
BPF_MAP_UPDATE_BATCH: Final = 26
BPF_MAP_DELETE_BATCH: Final = 27
BPF_PROG_TEST_RUN: Final = 10
BPF_OBJ_GET_INFO_BY_FD: Final = 15
BPF_OBJ_GET: Final = 7
BPF_PROG_GET_FD_BY_ID: Final = 13

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


class BpfProgInfo(ctypes.Structure):
    """Leading part of ``struct bpf_prog_info`` (up to its name)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class BpfGetIdAttr(ctypes.Structure):
    """The id member of ``union bpf_attr`` (BPF_PROG_GET_FD_BY_ID)."""

    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


def prog_id(fd: int) -> int:
    """The kernel's id of the program behind fd."""
    info = BpfProgInfo()
    bpf(BPF_OBJ_GET_INFO_BY_FD, BpfObjInfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)))
    return int(info.id)


def prog_name(program_id: int) -> str | None:
    """The name of a loaded program by id (None when it is gone)."""
    try:
        fd = bpf(BPF_PROG_GET_FD_BY_ID, BpfGetIdAttr(id=program_id))
    except OSError:
        return None
    try:
        info = BpfProgInfo()
        bpf(BPF_OBJ_GET_INFO_BY_FD, BpfObjInfoAttr(bpf_fd=fd, info_len=ctypes.sizeof(info),
                                                   info=ctypes.addressof(info)))
        return bytes(info.name).decode(errors="replace")
    finally:
        os.close(fd)


class BpfObjGetAttr(ctypes.Structure):
    """The ``obj`` member of ``union bpf_attr`` (BPF_OBJ_GET)."""

    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


def pinned_map_info(path: str) -> BpfMapInfo | None:
    """The kernel's description of the map pinned at `path`; None when nothing is pinned there."""
    name = ctypes.create_string_buffer(os.fsencode(path))
    try:
        fd = bpf(BPF_OBJ_GET, BpfObjGetAttr(pathname=ctypes.addressof(name)))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno_codes.ENOENT:
            return None
        raise
    try:
        return map_info(fd)
    finally:
        os.close(fd)


class BpfMapNextKeyAttr(ctypes.Structure):
    """The map-element member of ``union bpf_attr``, as BPF_MAP_GET_NEXT_KEY reads it."""

    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("next_key", ctypes.c_uint64)]


def map_count_keys(fd: int, key_size: int, limit: int) -> int:
    """Entries in the map behind fd, by walking its keys with BPF_MAP_GET_NEXT_KEY: no value is
    read or copied (cheap enough for a metrics scrape). At most `limit` (the map's capacity): a
    hash walk racing with deletes may restart from the first key, so the count is approximate
    while the map changes."""
    bufs = (ctypes.create_string_buffer(key_size), ctypes.create_string_buffer(key_size))
    attr = BpfMapNextKeyAttr(map_fd=fd, key=0, next_key=ctypes.addressof(bufs[0]))
    count = 0
    while count < limit:
        try:
            bpf(BPF_MAP_GET_NEXT_KEY, attr)
        except OSError as exc:
            if exc.errno == errno_codes.ENOENT:  # past the last key
                break
            raise
        count += 1
        attr.key = attr.next_key
        attr.next_key = ctypes.addressof(bufs[count % 2])
    return count


class BpfMapBatchAttr(ctypes.Structure):
    """The ``batch`` member of ``union bpf_attr``."""

    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64), ("keys", ctypes.c_uint64),
                ("values", ctypes.c_uint64), ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


_PER_CPU_TYPES: Final = frozenset({5, 6, 10})  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH
_NO_BATCH: Final = frozenset({errno_codes.EINVAL, errno_codes.ENOTSUP, errno_codes.EOPNOTSUPP, 524, errno_codes.ENOSPC})


def _count_batched(fd: int, key_size: int, value_size: int, limit: int, chunk: int = 4096) -> int:
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    cursor_in, cursor_out = ctypes.c_uint64(0), ctypes.c_uint64(0)
    total, first = 0, True
    while total < limit:
        attr = BpfMapBatchAttr(in_batch=0 if first else ctypes.addressof(cursor_in),
                               out_batch=ctypes.addressof(cursor_out), keys=ctypes.addressof(keys),
                               values=ctypes.addressof(values), count=chunk, map_fd=fd)
        try:
            bpf(BPF_MAP_LOOKUP_BATCH, attr)
        except OSError as exc:
            if exc.errno == errno_codes.ENOENT:  # the last batch (count says how many it holds)
                return min(limit, total + int(attr.count))
            raise
        total += attr.count
        first = False
        cursor_in.value = cursor_out.value
    return min(limit, total)


def map_count_entries(fd: int, limit: int) -> int:
    """Entries in the map behind fd: BPF_MAP_LOOKUP_BATCH where the map supports it (hash maps:
    about 15 ms for 64k conntrack entries), else the key walk of `map_count_keys` (LPM tries,
    per-CPU maps; about 15x slower per entry)."""
    info = map_info(fd)
    if info.type not in _PER_CPU_TYPES:
        try:
            return _count_batched(fd, info.key_size, info.value_size, limit)
        except OSError as exc:
            if exc.errno not in _NO_BATCH:
                raise
    return map_count_keys(fd, info.key_size, limit)


class BatchUnsupported(OSError):
    """The map type has no batch operation (LPM tries, for one): write element by element."""


def _batch_write(cmd: int, fd: int, keys: bytes, values: bytes | None, count: int) -> int:
    """One BPF_MAP_UPDATE_BATCH / DELETE_BATCH over `count` packed keys (and values); returns how
    many the kernel processed. Raises BatchUnsupported when the map has no batch op (nothing
    written), OSError otherwise (attr.count elements, in order, were processed before the error)."""
    key_buf = ctypes.create_string_buffer(keys, len(keys))
    value_buf = ctypes.create_string_buffer(values, len(values)) if values is not None else None
    attr = BpfMapBatchAttr(keys=ctypes.addressof(key_buf),
                           values=ctypes.addressof(value_buf) if value_buf is not None else 0,
                           count=count, map_fd=fd)
    try:
        bpf(cmd, attr)
    except OSError as exc:
        # EINVAL/ENOTSUP with nothing processed: the map type lacks the op (or the kernel does).
        if exc.errno in (errno_codes.EINVAL, errno_codes.ENOTSUP, errno_codes.EOPNOTSUPP, 524) and attr.count == 0:
            raise BatchUnsupported(exc.errno, f"bpf(cmd={cmd}) not supported on this map") from exc
        raise OSError(exc.errno, f"{exc.strerror} after {attr.count} of {count} elements") from exc
    return int(attr.count)


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int) -> int:
    """Write `count` packed (key, value) pairs in one syscall (hash and array maps)."""
    return _batch_write(BPF_MAP_UPDATE_BATCH, fd, keys, values, count)


def map_delete_batch(fd: int, keys: bytes, count: int) -> int:
    """Delete `count` packed keys in one syscall; a missing key fails it with ENOENT."""
    return _batch_write(BPF_MAP_DELETE_BATCH, fd, keys, None, count)
