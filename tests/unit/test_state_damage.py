"""The corruption matrix's store cells without a kernel: the object store and the cluster cache
against an in-memory witness, every damage of membrane_testkit/lab/corruption.py (milliseconds; the
netns and e2e tests run the same cells against real agents)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from membrane.agent.cluster_persisting import StateFile
from membrane.agent.datapath.witness import MemoryWitness
from membrane.agent.object_store import ObjectStore
from membrane.agent.state_files import StateDamaged
from membrane.api.state_objects import Kind, NamespaceState, PolicyState
from membrane_testkit.lab.corruption import Case, Damage, Outcome, apply_case, matrix

STORE_CASES = [c for c in matrix("standalone") if c.file.pattern.startswith("objects.json")]
CACHE_CASES = matrix("kubernetes")


def ns(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def deny_all() -> dict[str, object]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "shop"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def good_store(state: Path, witness: MemoryWitness) -> None:
    store = ObjectStore(state / "objects.json")
    store.load(witness)
    store.apply([ns("shop"), ns("web")])
    store.compact()  # batch 1 in the snapshot
    store.apply([deny_all()])  # batch 2 in the journal only


@pytest.mark.parametrize("case", STORE_CASES, ids=[c.id for c in STORE_CASES])
def test_object_store_cell(tmp_path: Path, case: Case) -> None:
    witness = MemoryWitness()
    good_store(tmp_path, witness)
    assert apply_case(tmp_path, case)
    store = ObjectStore(tmp_path / "objects.json")
    if case.outcome is Outcome.REFUSED:
        with pytest.raises(StateDamaged) as err:
            store.load(witness)
        message = str(err.value)
        assert "\n" not in message and "--accept-state-loss" in message
        assert str(tmp_path / case.file.pattern) in message
        assert list(tmp_path.glob("*.damaged"))
    else:
        store.load(witness)
        assert store.count("NetworkPolicy") == 1 and store.count("Namespace") == 2
        assert list(tmp_path.glob("*.damaged"))  # the dropped bytes are kept


def test_accept_state_loss_starts_empty_and_resets_the_witness(tmp_path: Path) -> None:
    witness = MemoryWitness()
    good_store(tmp_path, witness)
    (tmp_path / "objects.json.journal").unlink()
    store = ObjectStore(tmp_path / "objects.json")
    store.load(witness, accept_loss=True)
    assert store.count("Namespace") == 0 and (tmp_path / "objects.json.damaged").exists()
    assert ObjectStore(tmp_path / "objects.json").load(witness)["objects"] == 0  # and starts again


def test_no_witness_after_a_reboot_trusts_the_files(tmp_path: Path) -> None:
    good_store(tmp_path, MemoryWitness())
    store = ObjectStore(tmp_path / "objects.json")
    store.load(MemoryWitness())
    assert store.count("NetworkPolicy") == 1


@pytest.mark.parametrize("case", CACHE_CASES, ids=[c.id for c in CACHE_CASES])
def test_cluster_cache_cell(tmp_path: Path, case: Case) -> None:
    witness = MemoryWitness()
    cache = StateFile(tmp_path, witness=witness)
    objects = {(Kind.NAMESPACE, "shop"): NamespaceState("shop", ())}
    cache.write_base(1, "s1", objects)
    policy = PolicyState("shop", "deny", "{}")
    objects[(Kind.POLICY, "shop/deny")] = policy
    cache.append(2, "s1", [((Kind.POLICY, "shop/deny"), policy)], objects)
    good = tmp_path / "good"
    shutil.copytree(tmp_path, good, ignore=shutil.ignore_patterns("good"))
    assert apply_case(tmp_path, case)
    saved = StateFile(tmp_path, witness=witness).load()
    if case.damage is Damage.APPENDED:
        assert saved.damaged is None and saved.version == 2 and len(saved.objects) == 2
    else:  # never an older or empty state in place of the one the kernel enforces
        assert saved.damaged is not None and saved.version == 0 and not saved.objects
        assert not (tmp_path / case.file.pattern).exists()  # set aside
