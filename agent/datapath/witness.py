"""The state witness: a tiny pinned map recording how far the agent's state files got.

The object store and the cluster cache write their sequence number (and the stream they
belong to) here after each durable write. Pins outlive the agent but not a reboot, exactly like
the maps the files describe: so after a crash a store file that is missing, truncated or
older than its witness is recognised as damaged instead of being read as an empty or an older
state (which would silently drop Pods or a deny policy from maps that still enforce them).
After a reboot there is no witness and nothing in the kernel to protect: the files are
trusted as they are.

Python is its only user (no program reads it), so it is created here with raw bpf(2) calls.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Final

from .syscalls import bpf, map_info

WITNESS_NAME: Final = "mb_state_witness_v1"  # the version is bumped with the value's layout
BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM, BPF_OBJ_PIN, BPF_OBJ_GET = 0, 1, 2, 6, 7
BPF_MAP_TYPE_ARRAY: Final = 2
SLOTS: Final = 8
WRITTEN: Final = 1


class Slot(IntEnum):
    OBJECT_STORE = 0
    CLUSTER_CACHE = 1


class _Value(ctypes.Structure):
    _fields_ = [("seq", ctypes.c_uint64), ("tag", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _CreateAttr(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32), ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16)]


class _ObjAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


class _ElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


@dataclass(frozen=True)
class Mark:
    seq: int
    tag: int


class Witness:
    """Open (or create and pin) the witness map under pin_root."""

    def __init__(self, pin_root: Path) -> None:
        self.path = Path(pin_root) / WITNESS_NAME
        pathname = ctypes.create_string_buffer(str(self.path).encode())
        try:
            self.fd = bpf(BPF_OBJ_GET, _ObjAttr(pathname=ctypes.addressof(pathname)))
            self.created = False
        except FileNotFoundError:
            self.fd = bpf(BPF_MAP_CREATE, _CreateAttr(map_type=BPF_MAP_TYPE_ARRAY, key_size=4,
                                                      value_size=ctypes.sizeof(_Value), max_entries=SLOTS,
                                                      map_name=b"mb_witness"))
            bpf(BPF_OBJ_PIN, _ObjAttr(pathname=ctypes.addressof(pathname), bpf_fd=self.fd))
            self.created = True
        info = map_info(self.fd)
        if (info.type, info.key_size, info.value_size, info.max_entries) != \
                (BPF_MAP_TYPE_ARRAY, 4, ctypes.sizeof(_Value), SLOTS):
            os.close(self.fd)
            raise RuntimeError(f"{self.path}: a pinned map with another layout; remove it or bump {WITNESS_NAME}")

    def get(self, slot: Slot) -> Mark | None:
        """The last mark written for slot, None when none was (since the pins were made)."""
        key, value = ctypes.c_uint32(slot), _Value()
        bpf(BPF_MAP_LOOKUP_ELEM, _ElemAttr(map_fd=self.fd, key=ctypes.addressof(key), value=ctypes.addressof(value)))
        return Mark(int(value.seq), int(value.tag)) if value.flags & WRITTEN else None

    def set(self, slot: Slot, mark: Mark | None) -> None:
        key = ctypes.c_uint32(slot)
        value = _Value(mark.seq, mark.tag, WRITTEN) if mark is not None else _Value()
        bpf(BPF_MAP_UPDATE_ELEM, _ElemAttr(map_fd=self.fd, key=ctypes.addressof(key), value=ctypes.addressof(value)))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class MemoryWitness:
    """The same interface without a kernel (unit tests, tools reading a state dir offline)."""

    def __init__(self) -> None:
        self.marks: dict[Slot, Mark] = {}

    def get(self, slot: Slot) -> Mark | None:
        return self.marks.get(slot)

    def set(self, slot: Slot, mark: Mark | None) -> None:
        if mark is None:
            self.marks.pop(slot, None)
        else:
            self.marks[slot] = mark
