"""BPF_PROG_TEST_RUN for tc and XDP programs: run a loaded program on a crafted packet.

For SCHED_CLS programs the kernel builds an skb from ``data`` (an Ethernet
frame) on the device ``ifindex`` (loopback when 0) and takes a few fields
from the optional ``struct __sk_buff`` context, notably ``ingress_ifindex``
(copied into skb_iif, which is what the program reads). Redirect helpers
only record the target: nothing is transmitted, the verdict comes back as
``retval`` and the possibly rewritten frame as ``data_out``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Final

from membrane.agent.datapath.syscalls import BPF_PROG_TEST_RUN, BpfTestRunAttr, bpf

TC_ACT_OK: Final = 0
TC_ACT_SHOT: Final = 2
TC_ACT_REDIRECT: Final = 7
XDP_ABORTED: Final = 0
XDP_DROP: Final = 1
XDP_PASS: Final = 2

_OUT_HEADROOM: Final = 512  # programs may grow the packet


class SkBuffCtx(ctypes.Structure):
    """Leading fields of ``struct __sk_buff`` up to ``cb``.

    The kernel accepts a shorter ctx and zero-fills the rest; fields it does
    not allow setting must stay zero.
    """

    _fields_ = [
        ("len", ctypes.c_uint32),
        ("pkt_type", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("queue_mapping", ctypes.c_uint32),
        ("protocol", ctypes.c_uint32),
        ("vlan_present", ctypes.c_uint32),
        ("vlan_tci", ctypes.c_uint32),
        ("vlan_proto", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("tc_index", ctypes.c_uint32),
        ("cb", ctypes.c_uint32 * 5),  # the program's scratch words (tests pass facts in them)
    ]


@dataclass(frozen=True)
class ProgRunResult:
    retval: int
    data_out: bytes
    duration_ns: int  # average per repetition


def prog_test_run(
    prog_fd: int,
    data: bytes,
    *,
    ingress_ifindex: int = 0,
    ifindex: int = 0,
    mark: int = 0,
    cb0: int = 0,
    repeat: int = 1,
) -> ProgRunResult:
    """Run a tc program once (or ``repeat`` times) on ``data``.

    ``ifindex`` must name an existing device of the caller's netns (or be 0
    for loopback); ``ingress_ifindex`` can be any number. ``cb0`` is
    ``skb->cb[0]`` as the program reads it.
    """
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + _OUT_HEADROOM)
    ctx = SkBuffCtx(ingress_ifindex=ingress_ifindex, ifindex=ifindex, mark=mark)
    ctx.cb[0] = cb0
    attr = BpfTestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_size_out=ctypes.sizeof(data_out),
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(data_out),
        repeat=repeat,
        ctx_size_in=ctypes.sizeof(ctx),
        ctx_in=ctypes.addressof(ctx),
    )
    bpf(BPF_PROG_TEST_RUN, attr)
    return ProgRunResult(
        retval=attr.retval,
        data_out=data_out.raw[: attr.data_size_out],
        duration_ns=attr.duration,
    )


def xdp_test_run(prog_fd: int, data: bytes, *, repeat: int = 1) -> ProgRunResult:
    """Run an XDP program once (or ``repeat`` times) on a frame; the kernel's test device is loopback."""
    data_in = ctypes.create_string_buffer(data, len(data))
    data_out = ctypes.create_string_buffer(len(data) + _OUT_HEADROOM)
    attr = BpfTestRunAttr(
        prog_fd=prog_fd,
        data_size_in=len(data),
        data_size_out=ctypes.sizeof(data_out),
        data_in=ctypes.addressof(data_in),
        data_out=ctypes.addressof(data_out),
        repeat=repeat,
    )
    bpf(BPF_PROG_TEST_RUN, attr)
    return ProgRunResult(retval=attr.retval, data_out=data_out.raw[: attr.data_size_out],
                         duration_ns=attr.duration)
