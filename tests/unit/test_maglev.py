"""Maglev table (membrane/maglev.py): the properties the paper promises, deterministic tables."""

from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from membrane.maglev import DEFAULT_TABLE_SIZE, is_prime, maglev_table, permutation_params

KEYS = [f"10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(100)]


def owners(keys: list[str], size: int) -> list[str]:
    return [keys[i] for i in maglev_table(keys, size)]


def test_each_preference_list_is_a_permutation() -> None:
    size = 251
    for key in KEYS[:20]:
        offset, skip = permutation_params(key, size)
        assert 0 <= offset < size and 1 <= skip < size
        assert sorted((offset + j * skip) % size for j in range(size)) == list(range(size))


def test_table_is_full_and_only_names_backends() -> None:
    table = maglev_table(KEYS[:7], 251)
    assert len(table) == 251 and set(table) == set(range(7))


@pytest.mark.parametrize("n", [1, 2, 3, 10, 37, 100])
def test_every_backend_gets_its_share_within_one_percent(n: int) -> None:
    size = DEFAULT_TABLE_SIZE
    counts = Counter(maglev_table(KEYS[:n], size))
    share = size / n
    assert len(counts) == n
    for count in counts.values():
        assert abs(count - share) <= max(1.0, 0.01 * share)


@pytest.mark.parametrize("n", [3, 10, 50])
def test_removing_one_of_n_moves_about_one_nth(n: int) -> None:
    size = DEFAULT_TABLE_SIZE
    before = owners(KEYS[:n], size)
    for removed in (KEYS[0], KEYS[n // 2], KEYS[n - 1]):
        rest = [k for k in KEYS[:n] if k != removed]
        after = owners(rest, size)
        moved = sum(1 for a, b in zip(before, after, strict=True) if a != b) / size
        owned = before.count(removed) / size
        assert moved >= owned  # every slot of the removed backend moves
        # ... and little else: the paper's disruption for M >> N is a few points above 1/N.
        assert moved <= 1 / n + 0.03 + 1 / n * 0.25, (n, removed, moved)


def test_adding_a_backend_moves_about_one_nth() -> None:
    size = DEFAULT_TABLE_SIZE
    before, after = owners(KEYS[:9], size), owners(KEYS[:10], size)
    moved = sum(1 for a, b in zip(before, after, strict=True) if a != b) / size
    assert 0.1 <= moved <= 0.13


def test_same_input_same_table_and_order_independent_owners() -> None:
    keys = KEYS[:12]
    assert maglev_table(keys, 1021) == maglev_table(list(keys), 1021)
    assert owners(keys, 1021) == owners(list(reversed(keys)), 1021)


def test_table_is_pinned_across_processes_and_releases() -> None:
    # Python's hash() is salted per process; the table must not be: a restarted (or upgraded)
    # agent must rebuild the very same table, so this one is pinned. Changing the hashing is a
    # datapath break (every flow would move) and must be a deliberate, documented change.
    table = maglev_table(["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], 251)
    assert table[:20] == [0, 1, 1, 0, 0, 1, 2, 2, 1, 0, 0, 1, 1, 2, 2, 2, 0, 0, 1, 0]
    assert hashlib.sha256(bytes(table)).hexdigest() == \
        "025c68538311325c7f05e9ab4d0f61148e23ddbd97f48102d977edd5a2bea108"


@pytest.mark.parametrize("size", [0, 1, 100, 16384, 65535])
def test_size_must_be_prime(size: int) -> None:
    with pytest.raises(ValueError, match="not prime"):
        maglev_table(KEYS[:3], size)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        maglev_table(["a", "a"], 7)
    with pytest.raises(ValueError, match="do not fit"):
        maglev_table(KEYS[:11], 7)
    with pytest.raises(ValueError, match="maximum"):
        maglev_table(KEYS[:3], 1_000_003)
    assert maglev_table([], 7) == []


def test_is_prime() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert is_prime(16381) and is_prime(65521) and not is_prime(16383)
