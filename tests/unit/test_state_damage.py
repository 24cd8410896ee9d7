"""The corruption matrix's store cells without a kernel: the object store (standalone) and the
cluster cache (Kubernetes mode), both in state.db, against an in-memory witness, every damage of
membrane_testkit/lab/corruption.py (milliseconds; the netns and e2e tests run the same cells against
real agents)."""

from __future__ import annotations

from pathlib import Path

import pytest

from membrane.agent.cluster_persisting import ClusterCache
from membrane.agent.datapath.witness import MemoryWitness
from membrane.agent.object_store import ObjectStore
from membrane.agent.state_db import db_path
from membrane.agent.state_files import StateDamaged
from membrane.agent.state_storing import open_state
from membrane.api.state_objects import Kind, NamespaceState, PolicyState
from membrane_testkit.lab.corruption import Case, Damage, Outcome, apply_case, matrix

STORE_CASES = matrix("standalone")
CACHE_CASES = matrix("kubernetes")


def ns(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def deny_all() -> dict[str, object]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "shop"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def good_store(state: Path, witness: MemoryWitness) -> None:
    """Two batches, then a clean stop (the WAL checkpointed: at rest the state is state.db)."""
    db = open_state(state).db
    store = ObjectStore(db)
    store.load(witness)
    store.apply([ns("shop"), ns("web")])
    store.apply([deny_all()])
    db.close()


def load_standalone(state: Path, witness: MemoryWitness, accept_loss: bool = False) -> ObjectStore:
    """What the standalone agent does: open (refusing damage it cannot rebuild), then load."""
    store = ObjectStore(open_state(state, keep_damaged=not accept_loss).db)
    store.load(witness, accept_loss)
    return store


@pytest.mark.parametrize("case", STORE_CASES, ids=[c.id for c in STORE_CASES])
def test_object_store_cell(tmp_path: Path, case: Case) -> None:
    witness = MemoryWitness()
    good_store(tmp_path, witness)
    assert apply_case(tmp_path, case)
    if case.outcome is Outcome.REFUSED:
        with pytest.raises(StateDamaged) as err:
            load_standalone(tmp_path, witness)
        message = str(err.value)
        assert "\n" not in message and "--accept-state-loss" in message
        assert str(db_path(tmp_path)) in message
        assert (tmp_path / "state.db.damaged").exists()
        if case.damage is not Damage.DELETED:  # left in place: the next start refuses too
            with pytest.raises(StateDamaged):
                load_standalone(tmp_path, witness)
    else:
        store = load_standalone(tmp_path, witness)
        assert store.count("NetworkPolicy") == 1 and store.count("Namespace") == 2
        assert (tmp_path / "state.db.damaged").exists()  # the dropped bytes are kept


def test_accept_state_loss_starts_empty_and_resets_the_witness(tmp_path: Path) -> None:
    witness = MemoryWitness()
    good_store(tmp_path, witness)
    apply_case(tmp_path, Case(STORE_CASES[0].file, Damage.GARBAGE))
    garbage = (tmp_path / "state.db").read_bytes()
    store = load_standalone(tmp_path, witness, accept_loss=True)
    assert store.count("Namespace") == 0
    assert (tmp_path / "state.db.damaged").read_bytes() == garbage  # kept as it was, for a salvage
    store.db.close()
    assert load_standalone(tmp_path, witness).count("Namespace") == 0  # and starts again


def test_a_lost_batch_is_refused_not_read_as_fewer_objects(tmp_path: Path) -> None:
    """An older copy of state.db (or a lost log) ends before the witness's batch."""
    witness = MemoryWitness()
    db = open_state(tmp_path).db
    store = ObjectStore(db)
    store.load(witness)
    store.apply([ns("shop")])
    db.copy_to(tmp_path / "older")
    store.apply([deny_all()])
    db.close()
    (tmp_path / "older").replace(db_path(tmp_path))
    with pytest.raises(StateDamaged, match="ends at batch 1, the kernel's witness says 2"):
        load_standalone(tmp_path, witness)


def test_no_witness_after_a_reboot_trusts_the_store(tmp_path: Path) -> None:
    good_store(tmp_path, MemoryWitness())
    assert load_standalone(tmp_path, MemoryWitness()).count("NetworkPolicy") == 1


@pytest.mark.parametrize("case", CACHE_CASES, ids=[c.id for c in CACHE_CASES])
def test_cluster_cache_cell(tmp_path: Path, case: Case) -> None:
    witness = MemoryWitness()
    db = open_state(tmp_path).db
    cache = ClusterCache(db, witness)
    objects = {(Kind.NAMESPACE, "shop"): NamespaceState("shop", ())}
    cache.write_snapshot(1, "s1", objects)
    policy = PolicyState("shop", "deny", "{}")
    cache.write_delta(2, "s1", [((Kind.POLICY, "shop/deny"), policy)])
    db.close()
    assert apply_case(tmp_path, case)
    saved = ClusterCache(open_state(tmp_path).db, witness).load()
    if case.damage is Damage.APPENDED:
        assert saved.damaged is None and saved.version == 2 and len(saved.objects) == 2
    else:  # never an older or empty state in place of the one the kernel enforces
        assert saved.damaged is not None and "state.db" in saved.damaged
        assert saved.version == 0 and not saved.objects
        if case.damage is not Damage.DELETED:
            assert (tmp_path / "state.db.damaged").exists()  # set aside
