"""Conversions between Python values and the raw fields of the map structs.

Addresses and ports are stored in network byte order; ctypes reads the
integer fields in host order, hence the byte shuffling here.
"""

from __future__ import annotations

import ctypes
import sys
from ipaddress import IPv4Address
from typing import TypeVar

_Struct = TypeVar("_Struct", bound=ctypes.Structure)


def ip_to_field(ip: IPv4Address) -> int:
    """IPv4 address -> value of a ``__be32`` field as ctypes sees it."""
    return int.from_bytes(ip.packed, sys.byteorder)


def field_to_ip(value: int) -> IPv4Address:
    return IPv4Address(value.to_bytes(4, sys.byteorder))


def port_to_field(port: int) -> int:
    """Port number -> value of a ``__be16`` field as ctypes sees it."""
    return int.from_bytes(port.to_bytes(2, "big"), sys.byteorder)


def field_to_port(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, sys.byteorder), "big")


def mac_to_bytes(mac: str) -> bytes:
    parts = mac.split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(part, 16) for part in parts)


def bytes_to_mac(raw: bytes | ctypes.Array) -> str:  # type: ignore[type-arg]  # ctypes arrays of any element type
    return ":".join(f"{b:02x}" for b in bytes(raw))


def struct_copy(cls: type[_Struct], other: ctypes.Structure) -> _Struct:
    """Reinterpret a same-layout ctypes struct (e.g. bcc's generated class) as cls."""
    return cls.from_buffer_copy(bytes(other))
