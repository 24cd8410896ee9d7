"""The gap-free write plan (membrane.map_plan), replayed prefix by prefix against a datapath model.

The model judges a new TCP connection to a local endpoint as bpf/lib/policy.h does: the
source's identity (its local endpoint's identity, else the ipcache's longest prefix, else
WORLD), its CIDR identity (the CIDR map's longest prefix, else WORLD), then
`membrane.policy.lookup_flat` on the policy map. For random old/new states, every prefix of
the plan (batch by batch, and inside a batch element by element: the LPM tries are written one
element at a time) must give each probe packet the old state's verdict or the new one's.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from membrane.delta import Delta
from membrane.identities import ReservedIdentity
from membrane.map_plan import GAP_FREE_ORDER, Batch, Op, plan_deltas, plan_update, prefix_length, replay
from membrane.policy import Direction, FlatKey, FlatValue, Protocol, Verdict, lookup_flat

WORLD = int(ReservedIdentity.WORLD)
LOCAL = {"ep1": (1, IPv4Address("10.0.0.1")), "ep2": (2, IPv4Address("10.0.0.2"))}
POD_IPS = [IPv4Address(f"10.0.0.{i}") for i in range(1, 7)]
PREFIXES = [IPv4Network(p) for p in ("10.0.0.0/24", "10.0.0.0/29", "10.0.0.4/30", "10.0.0.0/16")]
PROBES = [*POD_IPS, IPv4Address("10.0.0.9"), IPv4Address("10.0.7.7"), IPv4Address("192.0.2.1")]
PORTS = (80, 81, 443, 8080)
POD_IDS = list(range(1000, 1006))
CIDR_IDS = [(1 << 24) + i for i in range(1, 4)]


# --- the datapath model -----------------------------------------------------------------------

def _lpm(table: Mapping[IPv4Network, int], ip: IPv4Address) -> int | None:
    best = max((net for net in table if ip in net), key=lambda n: n.prefixlen, default=None)
    return table[best] if best is not None else None


def identities_of(maps: Mapping[str, Mapping[Any, Any]], src: IPv4Address) -> tuple[int, int]:
    """(identity, CIDR identity) of a source address, as the datapath finds them."""
    local = next((name for name, (_, ip) in LOCAL.items() if ip == src), None)
    if local is not None and local in maps["endpoint_identity"]:
        identity = maps["endpoint_identity"][local]
    else:
        identity = _lpm(maps["ipcache"], src) or WORLD
    return identity, _lpm(maps["cidr"], src) or WORLD


def verdict(maps: Mapping[str, Mapping[Any, Any]], src: IPv4Address, endpoint_id: int, port: int) -> bool:
    identity, cidr_identity = identities_of(maps, src)
    found = lookup_flat(maps["policy"], endpoint_id, Direction.INGRESS, identity, Protocol.TCP, port, cidr_identity)
    return found is not None and found.verdict == int(Verdict.ALLOW)


def verdicts(maps: Mapping[str, Mapping[Any, Any]]) -> dict[tuple[IPv4Address, int, int], bool]:
    return {(src, eid, port): verdict(maps, src, eid, port)
            for src in PROBES for eid, _ in LOCAL.values() for port in PORTS}


# --- random states ----------------------------------------------------------------------------

def rule(rng: random.Random, identity: int) -> FlatKey:
    eid = rng.choice([1, 2])
    if rng.random() < 0.2:
        return FlatKey(eid, identity, int(Direction.INGRESS), int(Protocol.ANY), 0, 0)
    plen = rng.choice([16, 16, 14, 8])
    port = rng.choice(PORTS) >> (16 - plen) << (16 - plen)
    return FlatKey(eid, identity, int(Direction.INGRESS), int(Protocol.TCP), port, plen)


def random_state(rng: random.Random) -> dict[str, dict[Any, Any]]:
    cidrs = {net: rng.choice(CIDR_IDS) for net in PREFIXES if rng.random() < 0.6}
    ipcache: dict[Any, Any] = dict(cidrs)  # the agent writes ipBlock prefixes in both maps
    for ip in POD_IPS:
        if rng.random() < 0.8:
            ipcache[IPv4Network(f"{ip}/32")] = rng.choice(POD_IDS)
    endpoint_identity = {name: ipcache.get(IPv4Network(f"{ip}/32"), rng.choice(POD_IDS))
                         for name, (_, ip) in LOCAL.items()}
    policy = {rule(rng, rng.choice([0, *POD_IDS, *CIDR_IDS, WORLD])): FlatValue(int(Verdict.ALLOW), 1)
              for _ in range(rng.randrange(1, 10))}
    return {"policy": policy, "ipcache": ipcache, "cidr": cidrs, "endpoint_identity": endpoint_identity}


def mutate(rng: random.Random, old: dict[str, dict[Any, Any]]) -> dict[str, dict[Any, Any]]:
    """A new state as one apply produces it: some addresses move to other identities (their new
    identities gain rules, their old ones lose some), unrelated rules come and go, prefixes
    come and go."""
    new = {role: dict(entries) for role, entries in old.items()}
    for _ in range(rng.randrange(0, 3)):  # relabel a pod (and its endpoint, when local)
        ip = rng.choice(POD_IPS)
        net, to = IPv4Network(f"{ip}/32"), rng.choice(POD_IDS)
        was = new["ipcache"].get(net)
        new["ipcache"][net] = to
        new["policy"][rule(rng, to)] = FlatValue(int(Verdict.ALLOW), 3)  # the new labels are selected
        for key in [k for k in new["policy"] if k.identity == was and rng.random() < 0.5]:
            del new["policy"][key]  # the old ones no longer
        for name, (_, lip) in LOCAL.items():
            if lip == ip:
                new["endpoint_identity"][name] = to
    for _ in range(rng.randrange(0, 3)):  # a pod goes or comes
        net = IPv4Network(f"{rng.choice(POD_IPS)}/32")
        if net in new["ipcache"] and all(net.network_address != ip for _, ip in LOCAL.values()):
            del new["ipcache"][net]
        else:
            new["ipcache"][net] = rng.choice(POD_IDS)
    for _ in range(rng.randrange(0, 2)):  # an ipBlock prefix comes, goes or changes identity
        net = rng.choice(PREFIXES)
        if net in new["cidr"] and rng.random() < 0.5:
            del new["cidr"][net]
            del new["ipcache"][net]
        else:
            new["cidr"][net] = new["ipcache"][net] = rng.choice(CIDR_IDS)
    for _ in range(rng.randrange(0, 5)):  # rules come and go
        key = rule(rng, rng.choice([0, *POD_IDS, *CIDR_IDS, WORLD]))
        if key in new["policy"]:
            del new["policy"][key]
        else:
            new["policy"][key] = FlatValue(int(Verdict.ALLOW), 2)
    return new


def moves_consistent(old: Mapping[str, Mapping[Any, Any]], new: Mapping[str, Mapping[Any, Any]]) -> bool:
    """What the plan relies on (and the policy engine gives: identities stand for label sets):
    an address that moves from identity X to Y finds no rule for X that is new, and Y kept
    every rule it had; and an address does not change both its identity and its CIDR identity in
    one apply. Neither can be gap-free whatever the order (the maps are not written atomically:
    see the limits in membrane/map_plan.py), and they are not generated."""
    def rules(policy: Mapping[FlatKey, FlatValue], identity: int) -> set[FlatKey]:
        return {k for k in policy if k.identity == identity}
    for src in PROBES:
        pairs = list(zip(identities_of(old, src), identities_of(new, src), strict=False))
        if all(before != after for before, after in pairs):
            return False
        for before, after in pairs:
            if before != after and (not rules(new["policy"], before) <= rules(old["policy"], before)
                                    or not rules(old["policy"], after) <= rules(new["policy"], after)):
                return False
    return True


def scenarios(seed: int, count: int) -> list[tuple[dict[str, dict[Any, Any]], dict[str, dict[Any, Any]]]]:
    rng = random.Random(seed)
    found = []
    while len(found) < count:
        old = random_state(rng)
        new = mutate(rng, old)
        if moves_consistent(old, new):
            found.append((old, new))
    return found


def elements(plan: list[Batch]) -> list[Batch]:
    """The plan as the kernel sees it on LPM tries: one element at a time."""
    return [Batch(b.role, b.op, (entry,)) for b in plan for entry in b.entries]


def first_gap(old: dict[str, dict[Any, Any]], new: dict[str, dict[Any, Any]],
              plan: list[Batch]) -> tuple[int, tuple[IPv4Address, int, int]] | None:
    """The first (prefix length, packet) whose verdict is neither the old one nor the new one."""
    before, after = verdicts(old), verdicts(new)
    steps = elements(plan)
    for n in range(len(steps) + 1):
        mid = verdicts(replay(old, steps[:n]))
        for packet, allowed in mid.items():
            if allowed not in (before[packet], after[packet]):
                return n, packet
    return None


# --- tests ------------------------------------------------------------------------------------

def test_plan_writes_the_new_state_in_the_gap_free_order() -> None:
    old, new = scenarios(1, 1)[0]
    new["policy"][FlatKey(1, 1000, 0, 6, 80, 16)] = FlatValue(int(Verdict.ALLOW), 3)
    plan = plan_update(old, new)
    assert replay(old, plan) == new
    order = [(b.role, b.op) for b in plan]
    assert order == [step for step in GAP_FREE_ORDER if step in order]  # never out of order
    assert all(b.entries for b in plan)  # no empty batch


@pytest.mark.parametrize("seed", range(6))
def test_every_prefix_of_the_plan_gives_the_old_or_the_new_verdict(seed: int) -> None:
    checked = 0
    for old, new in scenarios(seed, 40):
        plan = plan_update(old, new)
        assert replay(old, plan) == new
        assert first_gap(old, new, plan) is None, (old, new, plan)
        checked += sum(len(b.entries) for b in plan)
    assert checked > 100  # the scenarios did change things


@pytest.mark.parametrize("order", [
    # ipcache before the rules its new identities need
    (("ipcache", Op.UPDATE), ("policy", Op.UPDATE), ("cidr", Op.UPDATE), ("endpoint_identity", Op.UPDATE),
     ("ipcache", Op.DELETE), ("cidr", Op.DELETE), ("policy", Op.DELETE)),
    # stale rules removed before addresses left their identity
    (("policy", Op.UPDATE), ("policy", Op.DELETE), ("ipcache", Op.UPDATE), ("cidr", Op.UPDATE),
     ("endpoint_identity", Op.UPDATE), ("ipcache", Op.DELETE), ("cidr", Op.DELETE)),
])
def test_the_replay_catches_a_wrong_order(order: tuple[tuple[str, Op], ...]) -> None:
    """The check can fail: the same scenarios written in a wrong order open gaps."""
    gaps = sum(first_gap(old, new, plan_update(old, new, order)) is not None for old, new in scenarios(0, 60))
    assert gaps > 0


def test_lpm_batches_go_longest_prefix_first_and_delete_shortest_first() -> None:
    """An address gets a /32 while its /24 changes identity: written /24 first, the address
    would briefly carry the /24's new identity, which neither state gives it."""
    pod, block = IPv4Network("10.0.0.5/32"), IPv4Network("10.0.0.0/24")
    old: dict[str, dict[Any, Any]] = {"ipcache": {block: CIDR_IDS[0]}, "cidr": {}, "endpoint_identity": {},
                                      "policy": {FlatKey(1, CIDR_IDS[1], 0, 0, 0, 0): FlatValue(1, 1)}}
    new = {**old, "ipcache": {block: CIDR_IDS[1], pod: 1000}}
    plan = plan_update(old, new)
    assert [k for k, _ in plan[0].entries] == [pod, block]
    assert first_gap(old, new, plan) is None
    shortest_first = [Batch("ipcache", Op.UPDATE, ((block, CIDR_IDS[1]), (pod, 1000)))]
    assert first_gap(old, new, shortest_first) is not None
    deletes = plan_update(new, old)
    assert [k for k, _ in deletes[-1].entries] == [pod]
    assert [prefix_length(k) for k, _ in plan_deltas({"ipcache": Delta({}, [pod, block])})[0].entries] == [24, 32]


def test_a_map_without_a_place_in_the_order_is_refused() -> None:
    with pytest.raises(ValueError, match="no place in the write order"):
        plan_deltas({"conntrack": Delta({1: 2}, [])})
