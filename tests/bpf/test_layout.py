"""The Python mirrors of bpf/types.h against the compiled program and the kernel."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from membrane.agent.datapath import LayoutMismatch
from membrane.agent.datapath.layout import (
    ENDPOINTS,
    MAP_SPECS,
    EndpointInfo,
    MapInfo,
    check_map_info,
    check_struct,
)
from membrane.agent.datapath.syscalls import bpf

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


class ShiftedEndpointInfo(ctypes.Structure):
    """EndpointInfo with two fields swapped: same size, wrong offsets."""

    _fields_ = [
        ("sec_identity", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("pod_mac", ctypes.c_uint8 * 6),
        ("host_mac", ctypes.c_uint8 * 6),
    ]


class WiderEndpointInfo(ctypes.Structure):
    _fields_ = [*EndpointInfo._fields_, ("extra", ctypes.c_uint32)]  # type: ignore[misc]


def test_identical_struct_passes() -> None:
    check_struct(EndpointInfo, EndpointInfo, "self")


@pytest.mark.parametrize("other", [ShiftedEndpointInfo, WiderEndpointInfo])
def test_mismatched_struct_is_detected(other: type[ctypes.Structure]) -> None:
    with pytest.raises(LayoutMismatch, match="does not match bpf/types.h"):
        check_struct(other, EndpointInfo, "endpoints value")


def test_map_info_mismatch_is_detected() -> None:
    good = MapInfo(ENDPOINTS.map_type, 1, 4, ctypes.sizeof(EndpointInfo), ENDPOINTS.max_entries)
    check_map_info(ENDPOINTS, good, "here")
    stale = MapInfo(ENDPOINTS.map_type, 1, 4, 16, ENDPOINTS.max_entries)
    with pytest.raises(LayoutMismatch, match="stale pin"):
        check_map_info(ENDPOINTS, stale, "here")


@needs_root
def test_mirrors_match_compiled_program(datapath) -> None:  # type: ignore[no-untyped-def]
    datapath.check_layouts()
    compiled = datapath.compiled_layouts()
    for spec in MAP_SPECS:
        key, value = compiled[spec.name]
        check_struct(spec.key, key, spec.name)
        check_struct(spec.value, value, spec.name)


@needs_root
def test_mismatched_mirror_against_compiled_program_is_detected(datapath) -> None:  # type: ignore[no-untyped-def]
    _, compiled_value = datapath.compiled_layouts()[ENDPOINTS.name]
    with pytest.raises(LayoutMismatch, match="ifindex"):
        check_struct(ShiftedEndpointInfo, compiled_value, "endpoints value")


class _MapCreateAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("map_type", "key_size", "value_size", "max_entries", "map_flags")]


class _ObjPinAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


@needs_root
def test_stale_pin_with_other_layout_is_refused(pin_root: Path) -> None:
    """bcc silently reuses any pin of the right name; the loader must refuse it."""
    from membrane.agent.datapath import Datapath

    pin_root.mkdir(parents=True)
    # An endpoints map as a hypothetical older build would have pinned it.
    fd = bpf(0, _MapCreateAttr(map_type=ENDPOINTS.map_type, key_size=4, value_size=16, max_entries=ENDPOINTS.max_entries))
    try:
        path = ctypes.create_string_buffer(str(pin_root / ENDPOINTS.name).encode())
        bpf(6, _ObjPinAttr(pathname=ctypes.addressof(path), bpf_fd=fd))
    finally:
        os.close(fd)
    dp = Datapath(pin_root)
    with pytest.raises(LayoutMismatch, match=ENDPOINTS.name):
        dp.load()
    dp.close()
