from ipaddress import IPv4Address, IPv4Network

import pytest

from membrane.ipam import IpamExhausted, IpamPool


def test_allocates_skipping_reserved_and_is_idempotent_per_owner() -> None:
    pool = IpamPool(IPv4Network("10.1.0.0/29"))
    first = pool.allocate("a/eth0")
    assert first == IPv4Address("10.1.0.2")  # .0 network, .1 node
    assert pool.allocate("a/eth0") == first
    got = {pool.allocate(f"p{i}") for i in range(4)}
    assert got == {IPv4Address(f"10.1.0.{i}") for i in range(3, 7)}
    with pytest.raises(IpamExhausted):
        pool.allocate("one-too-many")  # .7 is broadcast


def test_released_address_is_not_reused_immediately() -> None:
    pool = IpamPool(IPv4Network("10.1.0.0/28"))
    a = pool.allocate("a")
    pool.release("a")
    assert pool.allocate("b") != a


def test_round_trip_keeps_allocations_and_cursor() -> None:
    pool = IpamPool(IPv4Network("10.1.0.0/24"))
    for owner in ("a", "b", "c"):
        pool.allocate(owner)
    pool.release("b")
    restored = IpamPool.from_dict(pool.to_dict(), IPv4Network("10.1.0.0/24"))
    assert restored.allocations == pool.allocations
    fresh = restored.allocate("d")
    assert fresh not in pool.allocations and fresh != IPv4Address("10.1.0.3")


def test_rejects_too_small_cidr() -> None:
    with pytest.raises(ValueError):
        IpamPool(IPv4Network("10.1.0.0/31"))
