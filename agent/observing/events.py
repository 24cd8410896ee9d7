"""Decoding of `struct mb_flow_event` records from the `mb_events_v1` ring buffer.

The ctypes mirror is `layout.FlowEvent` (checked against the compiled program at load). Decoding
uses one precompiled `struct.Struct` instead of `FlowEvent.from_buffer_copy`: it is several
times faster per record, and the ring buffer callback is the hot path of the observer. A test
keeps the two in step.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from typing import NamedTuple

from membrane.agent.datapath.layout import Direction, EventType, EventVerdict, FlowEvent, Reason

__all__ = ["EVENT_SIZE", "Direction", "EventType", "FlowEventStruct", "RawEvent", "Reason", "decode_event", "encode_event"]

# The struct mirror lives with the other layouts (checked against the compiled program at load);
# tests and benchmarks build synthetic records from it.
FlowEventStruct = FlowEvent
VERDICT_FORWARDED = EventVerdict.FORWARDED
VERDICT_DROPPED = EventVerdict.DROPPED


# Little-endian host fields; addresses as raw bytes, ports as raw big-endian halves.
_WIRE = struct.Struct("<Q4s4s2s2sBBBBBBBBIIIHxxIIIQ")
EVENT_SIZE = _WIRE.size
assert EVENT_SIZE == ctypes.sizeof(FlowEventStruct) == 64, "mb_flow_event layout drifted"
# Records of the datapath before netns_cookie was appended (a restarted agent may read a few
# from programs that are still attached): decoded with netns_cookie 0.
_WIRE_V1 = struct.Struct("<Q4s4s2s2sBBBBBBBBIIIHxxIII")
EVENT_SIZE_V1 = _WIRE_V1.size


class DecodeError(ValueError):
    """A record that is not an mb_flow_event (wrong size)."""


class RawEvent(NamedTuple):
    """One decoded event: host byte order, dotted addresses, nothing looked up yet."""

    ts_ns: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    nexthdr: int
    type: int
    reason: int
    direction: int
    verdict: int
    tcp_flags: int
    is_reply: bool
    src_identity: int
    dst_identity: int
    ifindex: int
    endpoint_id: int
    rule_ref: int
    len: int
    count: int  # type: ignore[assignment]  # the C struct's field name; shadows tuple.count, never called
    netns_cookie: int = 0  # TRANSLATION events: the client's network namespace
    path: int = 0  # layout.FlowPath of a new flow's events (was padding: 0 from older datapaths)


def decode_event(data: bytes | bytearray | memoryview) -> RawEvent:
    """One ring buffer record -> RawEvent. Longer records are accepted (a newer datapath may
    append fields); shorter ones raise DecodeError."""
    if len(data) >= EVENT_SIZE:
        (ts, sa, da, sp, dp, nh, typ, reason, direction, verdict, flags, reply, path,
         sid, did, ifindex, epid, rule, length, count, cookie) = _WIRE.unpack_from(data)
    elif len(data) >= EVENT_SIZE_V1:
        (ts, sa, da, sp, dp, nh, typ, reason, direction, verdict, flags, reply, path,
         sid, did, ifindex, epid, rule, length, count), cookie = _WIRE_V1.unpack_from(data), 0
    else:
        raise DecodeError(f"flow event of {len(data)} bytes, expected {EVENT_SIZE}")
    ntoa = socket.inet_ntoa
    return RawEvent(ts, ntoa(sa), ntoa(da), int.from_bytes(sp, "big"), int.from_bytes(dp, "big"), nh, typ,
                    reason, direction, verdict, flags, bool(reply), sid, did, ifindex, epid, rule, length, count, cookie,
                    path)


def encode_event(**fields: int | str) -> bytes:
    """Build a record as the datapath would (tests, benchmarks): addresses as dotted strings,
    ports in host order; missing fields are 0 and `count` defaults to 1."""
    ev = FlowEventStruct()
    fields.setdefault("count", 1)
    for name, value in fields.items():
        if name in ("saddr", "daddr"):
            value = int.from_bytes(socket.inet_aton(str(value)), "little")  # memory = network order
        elif name in ("sport", "dport"):
            value = int.from_bytes(int(value).to_bytes(2, "big"), "little")
        setattr(ev, name, int(value))
    return bytes(ev)


def reason_name(reason: int) -> str:
    try:
        return Reason(reason).name
    except ValueError:  # a newer datapath than this agent: still say something useful
        return f"UNKNOWN_{reason}"


