"""ipBlock CIDR identities: LPM-exact allow sets, except, overlaps, /0, refcounting."""

from __future__ import annotations

import ipaddress
import random

from membrane.identities import LOCAL_IDENTITY_FLAG, ReservedIdentity, is_local
from membrane.k8s_models import ObjectRef
from membrane.policy import CidrTable, lpm_lookup
from membrane.policy.rules import IpBlock, parse_prefix

A, B = ObjectRef("ns", "a"), ObjectRef("ns", "b")


def block(cidr: str, *excepts: str) -> IpBlock:
    return IpBlock(parse_prefix(cidr), tuple(parse_prefix(e) for e in excepts))


def allows(table: CidrTable, blk: IpBlock, address: str) -> bool:
    identity = lpm_lookup(table.identities(), address)
    return (int(ReservedIdentity.WORLD) if identity is None else identity) in table.select(blk)


def test_cidr_and_except_get_local_identities() -> None:
    table = CidrTable()
    added, removed = table.set_policy(A, ["10.0.0.0/8", "10.1.0.0/16"])
    assert set(added) == {"10.0.0.0/8", "10.1.0.0/16"} and not removed
    assert all(is_local(i) for i in added.values())
    assert min(added.values()) == LOCAL_IDENTITY_FLAG | 1
    b = block("10.0.0.0/8", "10.1.0.0/16")
    assert table.select(b) == {added["10.0.0.0/8"]}
    assert allows(table, b, "10.2.3.4") and not allows(table, b, "10.1.3.4")
    assert not allows(table, b, "11.0.0.1")


def test_overlapping_blocks_across_policies() -> None:
    table = CidrTable()
    table.set_policy(A, ["10.0.0.0/8", "10.1.0.0/16"])  # 10/8 except 10.1/16
    table.set_policy(B, ["10.1.2.0/24"])  # a more specific block elsewhere
    a, b = block("10.0.0.0/8", "10.1.0.0/16"), block("10.1.2.0/24")
    plain = block("10.0.0.0/8")
    assert not allows(table, a, "10.1.2.3")  # the /24 identity is inside a's except
    assert allows(table, b, "10.1.2.3")
    assert allows(table, plain, "10.1.2.3") and allows(table, plain, "10.1.9.9")
    assert allows(table, a, "10.200.0.1") and not allows(table, b, "10.200.0.1")


def test_zero_prefix_is_world_and_not_allocated() -> None:
    table = CidrTable()
    added, _ = table.set_policy(A, ["0.0.0.0/0", "10.0.0.0/8"])
    assert set(added) == {"10.0.0.0/8"}
    everything_but_10 = block("0.0.0.0/0", "10.0.0.0/8")
    assert table.select(everything_but_10) == {int(ReservedIdentity.WORLD)}
    assert allows(table, everything_but_10, "8.8.8.8")
    assert not allows(table, everything_but_10, "10.9.9.9")
    assert not allows(table, block("10.0.0.0/8"), "8.8.8.8")


def test_ipv6_blocks() -> None:
    table = CidrTable()
    table.set_policy(A, ["2001:db8::/32", "2001:db8:1::/48"])
    b = block("2001:db8::/32", "2001:db8:1::/48")
    assert allows(table, b, "2001:db8:2::1") and not allows(table, b, "2001:db8:1::1")
    assert not allows(table, block("10.0.0.0/8"), "2001:db8:2::1")


def test_shared_prefix_lives_until_last_policy_drops_it() -> None:
    table = CidrTable()
    added, _ = table.set_policy(A, ["192.0.2.0/24"])
    again, _ = table.set_policy(B, ["192.0.2.0/24"])
    assert again == {}
    _, removed = table.set_policy(A, [])
    assert removed == {}
    _, removed = table.set_policy(B, [])
    assert removed == added and table.identities() == {}
    # Numbers are not reused right away.
    new, _ = table.set_policy(A, ["198.51.100.0/24"])
    assert set(new.values()).isdisjoint(added.values())


def test_affected_by() -> None:
    table = CidrTable()
    a = block("10.0.0.0/8", "10.1.0.0/16")
    assert table.affected_by(["10.2.0.0/16"], [a])
    assert not table.affected_by(["10.1.2.0/24"], [a])  # inside the except: still rejected
    assert not table.affected_by(["11.0.0.0/8"], [a])


def test_lpm_lookup() -> None:
    table = {"10.0.0.0/8": 1, "10.1.0.0/16": 2, "fd00::/8": 3}
    assert lpm_lookup(table, "10.1.0.1") == 2
    assert lpm_lookup(table, "10.2.0.1") == 1
    assert lpm_lookup(table, "fd00::1") == 3
    assert lpm_lookup(table, "11.0.0.1") is None


def _random_block(rng: random.Random) -> IpBlock:
    length = rng.choice([8, 12, 16, 20, 24])
    net = ipaddress.ip_network((rng.choice([10, 172]) << 24 | rng.getrandbits(24), length), strict=False)
    excepts = []
    for _ in range(rng.randint(0, 2)):
        sub = rng.randint(length + 1, 28)
        offset = rng.getrandbits(sub - length) << (32 - sub)
        excepts.append(ipaddress.ip_network((int(net.network_address) + offset, sub)))
    return IpBlock(net, tuple(excepts))


def test_lpm_selection_is_exact_for_random_overlapping_blocks() -> None:
    """Identity-based decision == set semantics (in cidr and in no except), for every block."""
    rng = random.Random(7)
    for _ in range(20):
        blocks = [_random_block(rng) for _ in range(rng.randint(1, 5))]
        table = CidrTable()
        for i, blk in enumerate(blocks):
            table.set_policy(ObjectRef("ns", f"p{i}"), [str(p) for p in blk.prefixes()])
        probes = [
            str(ipaddress.ip_address(int(p.network_address) + rng.getrandbits(32 - p.prefixlen)))
            for blk in blocks for p in blk.prefixes() for _ in range(4)
        ] + ["10.0.0.1", "172.16.0.1", "8.8.8.8"]
        for blk in blocks:
            for address in probes:
                ip = ipaddress.ip_address(address)
                expected = ip in blk.cidr and not any(ip in e for e in blk.excepts)
                assert allows(table, blk, address) == expected, (blk, address)
