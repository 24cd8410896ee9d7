"""A CIDRDenyList split into fixed buckets for the state stream (pure).

A list of 100,000 prefixes streamed as one record costs every node the whole list for every
edit. Instead each prefix goes to one of `BUCKETS` chunks by a stable hash of its network form
(CRC-32: the same in every process and release, unlike Python's salted `hash()`), so an edit
ships and re-converts only the chunks whose prefixes changed, and the list's head record
(`CIDRDenyListState`, no prefixes) carries its generation and a digest of the whole contents.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable

from membrane.api.state_objects import CIDRDenyChunkState, CIDRDenyListState

BUCKETS = 64


def bucket_of(cidr: str) -> int:
    return zlib.crc32(cidr.encode()) % BUCKETS


def digest(cidrs: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(cidrs).encode()).hexdigest()[:16]


def split(name: str, generation: int, cidrs: Iterable[str]) -> tuple[CIDRDenyListState, list[CIDRDenyChunkState]]:
    """The head and the non-empty chunks of one list (each chunk keeps the list's order)."""
    ordered = tuple(cidrs)
    buckets: dict[int, list[str]] = {}
    for cidr in ordered:
        buckets.setdefault(bucket_of(cidr), []).append(cidr)
    chunks = [CIDRDenyChunkState(name, bucket, tuple(held)) for bucket, held in sorted(buckets.items())]
    return CIDRDenyListState(name, generation, (), digest(ordered)), chunks


def joined(head: CIDRDenyListState, chunks: Iterable[CIDRDenyChunkState]) -> tuple[str, ...]:
    """The list's prefixes from its head and chunks (an old head's own prefixes first)."""
    out = list(head.cidrs)
    for chunk in sorted(chunks, key=lambda c: c.bucket):
        out.extend(chunk.cidrs)
    return tuple(dict.fromkeys(out))
