"""The load balancer's map contents (membrane/lb_maps.py): entries, stable ids, the write plan."""

from __future__ import annotations

import random
from ipaddress import IPv4Address
from typing import Any

from membrane.lb_maps import (
    F_AFFINITY,
    F_CLUSTER_IP,
    F_TERMINATING,
    LB_ORDER,
    LbFrontendAddr,
    LbIds,
    LbKey,
    desired_contents,
)
from membrane.map_plan import Op, plan_update
from membrane_testkit.lb_entries import Back, Entry, Front


def test_one_frontend_entries() -> None:
    entry = Entry(Front("10.96.0.10", 80), (Back("10.1.0.1", 8080, "n1"), Back("10.1.0.2", 8080)),
                  affinity_timeout=30)
    maps = desired_contents([entry], "n1")
    vip = IPv4Address("10.96.0.10")
    (master,) = maps["lb_masters"].values()
    assert maps["lb_masters"] == {LbKey(vip, 80, 6): master}
    assert (master.count, master.flags, master.affinity_timeout_s) == (2, F_CLUSTER_IP | F_AFFINITY, 30)
    assert maps["lb_rev_nat"] == {master.rev_nat_index: LbFrontendAddr(vip, 80, 6)}
    slots = maps["lb_slots"]
    assert sorted(k.slot for k in slots) == [1, 2]
    backends = maps["lb_backends"]
    assert {backends[s.backend_id].address for s in slots.values()} == {IPv4Address("10.1.0.1"),
                                                                        IPv4Address("10.1.0.2")}
    assert backends[slots[LbKey(vip, 80, 6, 1)].backend_id].flags == 0x2  # local to n1
    assert len(maps["lb_members"]) == 2


def test_refusing_terminating_and_unsupported_frontends() -> None:
    maps = desired_contents([Entry(Front("10.96.0.1", 53, "UDP")),
                             Entry(Front("10.96.0.2", 80), (Back("10.1.0.9", 80, ready=False, terminating=True),)),
                             Entry(Front("fd00::1", 80), (Back("fd00::9", 80),)),
                             Entry(Front("10.96.0.3", 80, "SCTP"), (Back("10.1.0.9", 80),))], "n1")
    masters = {k.address: v for k, v in maps["lb_masters"].items()}
    assert set(masters) == {IPv4Address("10.96.0.1"), IPv4Address("10.96.0.2")}  # no IPv6, no SCTP in the maps
    assert masters[IPv4Address("10.96.0.1")].count == 0  # refuse
    assert masters[IPv4Address("10.96.0.2")].flags & F_TERMINATING


def test_backends_are_shared_and_ids_survive_a_restart() -> None:
    table = [Entry(Front("10.96.0.10", 80), (Back("10.1.0.1", 8080),)),
             Entry(Front("10.96.0.11", 80), (Back("10.1.0.1", 8080), Back("10.1.0.2", 8080)))]
    first = desired_contents(table, "n1")
    assert len(first["lb_backends"]) == 2  # 10.1.0.1:8080 once for both frontends
    restarted = LbIds()
    restarted.seed(first["lb_rev_nat"], first["lb_backends"])  # what the pinned maps hold
    assert desired_contents(list(reversed(table)), "n1", restarted) == first  # nothing to write


def test_freed_ids_are_not_reused_at_once() -> None:
    ids = LbIds()
    a = ids.backends.get((IPv4Address("10.1.0.1"), 80, 6, 0))
    ids.backends.release((IPv4Address("10.1.0.1"), 80, 6, 0))
    assert ids.backends.get((IPv4Address("10.1.0.2"), 80, 6, 0)) != a


def _check_state(maps: dict[str, dict[Any, Any]]) -> None:
    """What the socket hooks need of every intermediate state: a master's slots exist and each
    slot's backend exists."""
    for key, master in maps["lb_masters"].items():
        for slot in range(1, master.count + 1):
            entry = maps["lb_slots"].get(LbKey(key.address, key.port, key.protocol, slot, key.scope))
            assert entry is not None, f"{key} counts slot {slot} that is not written"
            assert entry.backend_id in maps["lb_backends"], f"{key} slot {slot}: backend missing"


def _random_table(rng: random.Random) -> list[Entry]:
    out = []
    for vip in rng.sample(range(1, 9), rng.randint(0, 6)):
        count = rng.randint(0, 5)
        backends = tuple(Back(f"10.1.0.{b}", rng.choice((80, 8080))) for b in rng.sample(range(1, 12), count))
        out.append(Entry(Front(f"10.96.0.{vip}", rng.choice((80, 443))), backends,
                         affinity_timeout=rng.choice((0, 10))))
    return out


def test_every_step_of_the_plan_keeps_frontends_whole() -> None:
    rng = random.Random(11)
    for _ in range(300):
        ids = LbIds()
        old = desired_contents(_random_table(rng), "n1", ids)
        new = desired_contents(_random_table(rng), "n1", ids)
        state = {role: dict(v) for role, v in old.items()}
        for batch in plan_update(old, new, LB_ORDER):
            for key, value in batch.entries:  # element by element, as the kernel writes them
                if batch.op is Op.UPDATE:
                    state[batch.role][key] = value
                else:
                    state[batch.role].pop(key, None)
                _check_state(state)
        assert state == new


def test_a_wrong_order_is_caught() -> None:
    """The check above can fail: masters before slots leaves a master counting missing slots."""
    wrong = tuple((role, op) for role, op in LB_ORDER if role != "lb_slots" or op is Op.DELETE)
    wrong = (("lb_masters", Op.UPDATE), ("lb_slots", Op.UPDATE)) + tuple(
        step for step in wrong if step != ("lb_masters", Op.UPDATE))
    ids = LbIds()
    old = desired_contents([], "n1", ids)
    new = desired_contents([Entry(Front("10.96.0.1", 80), (Back("10.1.0.1", 80),))], "n1", ids)
    state = {role: dict(v) for role, v in old.items()}
    failed = False
    for batch in plan_update(old, new, wrong):
        for key, value in batch.entries:
            state[batch.role][key] = value
            try:
                _check_state(state)
            except AssertionError:
                failed = True
    assert failed
