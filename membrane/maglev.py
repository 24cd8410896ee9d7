"""Maglev consistent hashing (pure): the lookup table of a service's backends.

As in "Maglev: A Fast and Reliable Software Network Load Balancer" (Eisenbud et al., NSDI 2016,
section 3.4): every backend has a preference list over the table's slots, a permutation given by
an offset and a skip computed from two independent hashes of the backend's key; backends take
turns claiming their next preferred free slot until the table is full. So each backend owns
either floor(M/N) or ceil(M/N) of the M slots, and removing one of N backends moves little more
than the 1/N of slots it owned.

The hashes are keyed BLAKE2b of a stable backend key (e.g. "10.0.1.5:8080"), never Python's
`hash()` (salted per process): the same backends give the same table in every process, so a
restarted agent rebuilds identical tables and no flow changes backend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_TABLE_SIZE = 16381  # prime; ~100 slots per backend up to 160 backends
MAX_TABLE_SIZE = 131071  # prime; the datapath's per-service table stays under 512 KiB


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _hash(key: bytes, person: bytes) -> int:
    # Two independent hash functions: one BLAKE2b with two personalisation strings.
    return int.from_bytes(hashlib.blake2b(key, digest_size=8, person=person).digest(), "little")


def permutation_params(key: str, size: int) -> tuple[int, int]:
    """(offset, skip) of a backend: its preference list is offset, offset+skip, ... mod size."""
    data = key.encode()
    return _hash(data, b"membrane-offset") % size, _hash(data, b"membrane-skip") % (size - 1) + 1


def check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError(f"maglev table size must be an integer, got {size!r}")
    if not is_prime(size):
        raise ValueError(f"maglev table size {size} is not prime (use a prime such as 251, 16381 or 65521)")
    if size > MAX_TABLE_SIZE:
        raise ValueError(f"maglev table size {size} is above the maximum {MAX_TABLE_SIZE}")


def maglev_table(backend_keys: Sequence[str], size: int = DEFAULT_TABLE_SIZE) -> list[int]:
    """The lookup table: `size` entries, each an index into `backend_keys`.

    No backends: an empty list (the service refuses). The result depends only on the set of
    keys and their order in `backend_keys` for the returned indices; the slot owners (which key
    owns which slot) do not depend on the order given."""
    check_size(size)
    if not backend_keys:
        return []
    if len(set(backend_keys)) != len(backend_keys):
        raise ValueError("maglev backend keys must be unique")
    if len(backend_keys) > size:
        raise ValueError(f"{len(backend_keys)} backends do not fit a maglev table of {size} slots")
    # Fill in key order so the slot owners do not depend on the caller's order; map back after.
    order = sorted(range(len(backend_keys)), key=lambda i: backend_keys[i])
    params = [permutation_params(backend_keys[i], size) for i in order]
    nexts = [0] * len(order)
    table = [-1] * size
    filled = 0
    while True:
        for turn, (offset, skip) in enumerate(params):
            slot = (offset + nexts[turn] * skip) % size
            while table[slot] >= 0:
                nexts[turn] += 1
                slot = (offset + nexts[turn] * skip) % size
            table[slot] = order[turn]
            nexts[turn] += 1
            filled += 1
            if filled == size:
                return table
