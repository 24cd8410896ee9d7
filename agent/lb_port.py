"""The load balancer's view of the maps: `lb_slots` and `lb_masters` are one kernel map.

`membrane.lb_maps` splits `mb_lb4_services_v1` into two roles so the write plan can order slots
before masters; this port routes both to the kernel map (`lb_services`) and, when reading, gives
each role its own entries. Everything else passes through to the datapath port.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from membrane.lb_maps import LbKey

from .map_managing import MapPort

_SHARED = {"lb_slots": "lb_services", "lb_masters": "lb_services"}


class LbMapPort:
    def __init__(self, port: MapPort) -> None:
        self.port = port

    def capacity(self, role: str) -> int | None:
        return self.port.capacity(_SHARED.get(role, role))

    def read_map(self, role: str) -> dict[Any, Any]:
        contents = self.port.read_map(_SHARED.get(role, role))
        if role == "lb_slots":
            return {k: v for k, v in contents.items() if isinstance(k, LbKey) and k.slot}
        if role == "lb_masters":
            return {k: v for k, v in contents.items() if isinstance(k, LbKey) and not k.slot}
        return contents

    def update_map(self, role: str, entries: Mapping[Any, Any]) -> None:
        self.port.update_map(_SHARED.get(role, role), entries)

    def delete_map(self, role: str, keys: Sequence[Any]) -> int:
        return self.port.delete_map(_SHARED.get(role, role), keys)
