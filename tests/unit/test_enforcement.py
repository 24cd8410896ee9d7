"""Enforcement bookkeeping: the agent's ledger (apply --wait), the operator's book (policy
annotations), the policy manager refusing what a map cannot hold, the store's rollback."""

from __future__ import annotations

import json
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from membrane.agent.enforcement_ledger import EnforcementLedger
from membrane.agent.object_store import ObjectStore
from membrane.agent.policy_syncing import LocalEndpoint, MapCapacityError, PolicyManager
from membrane.api.state_objects import Change, Kind, PolicyState
from membrane.identities import ReservedIdentity
from membrane.k8s_models import ObjectRef, parse_object
from membrane.operator.enforcement_book import ENFORCED, ENFORCED_GENERATION, EnforcementBook
from membrane_testkit.fake_maps import FakePolicyMaps
from membrane_testkit.label_identities import LabelIdentities


# --- the agent's ledger -------------------------------------------------------------------------
def test_ledger_wait_returns_once_enforced_or_refused() -> None:
    ledger = EnforcementLedger("n1")
    v1, v2 = ledger.next_version(), ledger.next_version()
    assert (v1, v2) == (1, 2) and ledger.outcome(v1) == "pending"
    assert ledger.wait(v1, 0.01) == "pending"
    threading.Timer(0.05, ledger.enforce, args=(v2,)).start()
    started = time.monotonic()
    assert ledger.wait(v1, 5) == "enforced"  # a newer version covers the older ones
    assert time.monotonic() - started < 2
    v3 = ledger.next_version()
    ledger.refuse(v3, "the policy map would need 99 entries")
    assert ledger.wait(v3, 5) == "refused" and "99 entries" in (ledger.reason(v3) or "")
    status = ledger.status()
    assert status["enforced_version"] == 2 and status["last_refused"]["version"] == 3
    ledger.restart()
    assert ledger.outcome(1) == "pending" and ledger.status()["enforced_version"] == 0


# --- the operator's book --------------------------------------------------------------------------
def policy_change(name: str, generation: int | None) -> Change:
    obj = {"metadata": {"name": name, "namespace": "shop", **({"generation": generation} if generation else {})}}
    return Change((Kind.POLICY, f"shop/{name}"), PolicyState("shop", name, json.dumps(obj)))


def test_book_counts_nodes_whose_ack_covers_the_policy_version() -> None:
    book = EnforcementBook()
    book.committed(3, [policy_change("a", 1), policy_change("b", 1)])
    nodes = ["n1", "n2", "n3"]
    assert book.annotations(nodes, {"n1": 2}) == {"shop/a": {ENFORCED: "0/3"}, "shop/b": {ENFORCED: "0/3"}}
    assert book.annotations(nodes, {"n1": 3, "n2": 4})["shop/a"] == {ENFORCED: "2/3"}
    everyone = {"n1": 3, "n2": 3, "n3": 3}
    assert book.annotations(nodes, everyone)["shop/a"] == {ENFORCED: "3/3", ENFORCED_GENERATION: "1"}
    # A new generation on its way: the count drops, the generation all enforce stays.
    book.committed(5, [policy_change("a", 2)])
    assert book.annotations(nodes, everyone)["shop/a"] == {ENFORCED: "0/3", ENFORCED_GENERATION: "1"}
    assert book.annotations(nodes, {**everyone, "n1": 5})["shop/a"] == {ENFORCED: "1/3", ENFORCED_GENERATION: "1"}
    assert book.annotations(nodes, dict.fromkeys(nodes, 5))["shop/a"] == {ENFORCED: "3/3", ENFORCED_GENERATION: "2"}
    # A node without an agent never counts as enforcing; a deleted policy is forgotten.
    assert book.annotations([*nodes, "n4"], dict.fromkeys(nodes, 5))["shop/a"][ENFORCED] == "3/4"
    book.committed(6, [Change((Kind.POLICY, "shop/b"), None), Change((Kind.ENDPOINT, "shop/x"), None)])
    assert book.policies() == ["shop/a"]
    assert book.annotations([], {}) == {"shop/a": {ENFORCED: "0/0", ENFORCED_GENERATION: "2"}}


# --- map capacity -------------------------------------------------------------------------------
def many_ports_policy(count: int, first: int = 1000) -> object:
    return parse_object({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": "db", "namespace": "shop"},
                         "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                                  "ingress": [{"ports": [{"port": first + 2 * i, "protocol": "TCP"}
                                                         for i in range(count)]}]}})


def manager(tmp_path: Path, maps: FakePolicyMaps) -> PolicyManager:
    mgr = PolicyManager(LabelIdentities(), maps, lambda key, identity: None,
                        lambda: ["192.0.2.1"])
    mgr.on_namespace("shop", parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))  # type: ignore[arg-type]
    ref = ObjectRef("shop", "db")
    mgr.on_pod(ref, parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {  # type: ignore[arg-type]
        "name": "db", "namespace": "shop", "labels": {"app": "db"}}, "spec": {"containers": []}}))
    mgr.on_endpoint(ref, LocalEndpoint("c1/eth0", 7, IPv4Address("10.0.0.2")))
    return mgr


def test_a_change_that_would_overflow_the_policy_map_writes_nothing(tmp_path: Path) -> None:
    maps = FakePolicyMaps()
    maps.capacities["policy"] = 64
    mgr = manager(tmp_path, maps)
    ref = ObjectRef("shop", "db")
    mgr.on_policy(ref, many_ports_policy(40))  # type: ignore[arg-type]
    mgr.apply()
    before, revision = dict(maps.policy), maps.revision
    assert 40 <= len(before) <= 64
    mgr.on_policy(ref, many_ports_policy(100))  # type: ignore[arg-type]
    with pytest.raises(MapCapacityError) as refused:
        mgr.apply()
    assert refused.value.role == "policy" and refused.value.capacity == 64
    assert "policy map would need" in str(refused.value) and "--policy-map-entries" in str(refused.value)
    assert maps.policy == before and maps.revision == revision and mgr.refused == 1  # nothing written
    # Replacing 40 entries by 40 others needs room for both for an instant (gap-free order).
    mgr.on_policy(ref, many_ports_policy(40, first=5000))  # type: ignore[arg-type]
    with pytest.raises(MapCapacityError):
        mgr.apply()
    # The caller rolls the inputs back: the next apply has nothing to write, and later changes work.
    mgr.on_policy(ref, many_ports_policy(40))  # type: ignore[arg-type]
    mgr.apply()
    assert maps.policy == before and maps.revision == revision
    mgr.on_policy(ref, many_ports_policy(45))  # type: ignore[arg-type]
    mgr.apply()
    assert len(maps.policy) == len(before) + 5 and maps.revision == revision + 1


def test_a_change_that_would_overflow_the_ipcache_is_refused(tmp_path: Path) -> None:
    maps = FakePolicyMaps()
    maps.capacities["ipcache"] = 8
    mgr = manager(tmp_path, maps)
    mgr.apply()
    held = dict(maps.ipcache)
    for i in range(10):
        mgr.on_pod(ObjectRef("shop", f"p{i}"), parse_object({  # type: ignore[arg-type]
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}", "namespace": "shop"},
            "spec": {"containers": []}, "status": {"podIP": f"10.0.1.{i + 1}"}}))
    with pytest.raises(MapCapacityError) as refused:
        mgr.apply()
    assert refused.value.role == "ipcache" and maps.ipcache == held
    assert int(ReservedIdentity.HOST) in held.values()


def test_store_restore_puts_back_what_a_refused_batch_changed(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    store.load()
    heard: list[tuple[str, object]] = []
    store.listeners.append(lambda kind, key, obj: heard.append((key[2], obj)))
    old = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "labels": {"v": "1"}}}
    store.apply([old])
    batch = [{**old, "metadata": {"name": "a", "labels": {"v": "2"}}},
             {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}]
    saved = store.saved(batch)
    store.apply(batch)
    heard.clear()
    store.restore(saved)
    assert store.raw == {("Namespace", "", "a"): old}
    assert sorted(name for name, _ in heard) == ["a", "b"] and dict(heard)["b"] is None
    reloaded = ObjectStore(tmp_path)
    reloaded.load(store.witness)
    assert reloaded.raw == store.raw  # persisted
