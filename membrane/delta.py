"""Delta tracking: the difference between desired and actual map contents (pure).

Managers compute the whole desired content cheaply; only this difference is written to the
kernel, so an apply after no change writes nothing (Calico Felix's delta tracker idea).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class Delta(Generic[K, V]):
    upserts: dict[K, V] = field(default_factory=dict)
    deletes: list[K] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


def diff(desired: Mapping[K, V], actual: Mapping[K, V]) -> Delta[K, V]:
    """Writes that turn `actual` into `desired`: changed or new keys, then vanished keys."""
    delta: Delta[K, V] = Delta()
    for key, value in desired.items():
        if actual.get(key) != value:
            delta.upserts[key] = value
    delta.deletes = [key for key in actual if key not in desired]
    return delta
