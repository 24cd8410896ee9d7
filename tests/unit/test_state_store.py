"""The agent's SQLite state store (agent/state_db.py, agent/state_storing.py): private modes,
one transaction per ADD, damage handled without loss of what is intact, and the one-time
upgrade from the previous release's JSON files (kept as a backup)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from membrane.agent.endpoints import Endpoint
from membrane.agent.identity_book import IdentityBook
from membrane.agent.state_db import StateDb, db_path, open_db, read_endpoint_rows, side_paths
from membrane.agent.state_storing import LEGACY_BACKUP, open_state
from membrane.identities import CLUSTER_IDENTITY_MIN, IdentityAllocator, identity_labels
from membrane_testkit.lab.corruption import Damage, damage_file

REPO = Path(__file__).resolve().parents[2]


def record(i: int) -> Endpoint:
    return Endpoint(container_id=f"c{i}", ifname="eth0", netns=f"/ns{i}", host_ifname=f"mb{i:012d}", host_ifindex=10 + i,
                    host_mac="02:00:00:00:00:01", pod_mac="02:00:00:00:00:02", ip=f"10.9.0.{i + 2}", endpoint_id=i + 1,
                    namespace="shop", pod=f"p{i}", identity=CLUSTER_IDENTITY_MIN + i)


def fill(state: Path, n: int = 20) -> StateDb:
    """Writes n endpoint rows; returns the open store (closing it checkpoints the WAL away)."""
    db = open_state(state).db
    for i in range(n):
        ep = record(i)
        db.put_endpoint(ep.key, str(ep.ip), ep.model_dump(mode="json"))
    db.put_doc("ipam", {"cidr": "10.9.0.0/24", "cursor": n + 2})
    return db


def test_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        state = tmp_path / "a" / "state"
        fill(state)
    finally:
        os.umask(old)
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for path in [db_path(state), *side_paths(db_path(state))]:
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_only_the_adapter_imports_sqlite3() -> None:
    users = sorted(str(p.relative_to(REPO)) for root in ("agent", "membrane", "operator")
                   for p in (REPO / root).rglob("*.py") if "import sqlite3" in p.read_text())
    assert users == ["agent/state_db.py"], users


def test_a_transaction_commits_all_or_nothing(tmp_path: Path) -> None:
    db = open_state(tmp_path).db
    with pytest.raises(RuntimeError), db.transaction():
        db.put_endpoint("c1/eth0", "10.9.0.2", {"k": 1})
        db.put_doc("ipam", {"cursor": 3})
        raise RuntimeError("crash between the two")
    assert db.endpoint_rows() == [] and db.get_doc("ipam") is None
    with db.transaction():
        db.put_endpoint("c1/eth0", "10.9.0.2", {"k": 1})
        db.put_doc("ipam", {"cursor": 3})
    assert read_endpoint_rows(tmp_path) == [("c1/eth0", "10.9.0.2")]


def test_a_durable_transaction_is_synchronous_full_and_only_it(tmp_path: Path) -> None:
    """Store batches are fsynced before they return (FULL); everything else stays NORMAL."""
    db = open_state(tmp_path).db
    level = lambda: db._conn.execute("PRAGMA synchronous").fetchone()[0]  # noqa: E731 - 1 NORMAL, 2 FULL
    assert level() == 1
    with db.transaction(durable=True):
        assert level() == 2
        with db.transaction():  # joins the durable one
            db.put_doc("a", 1)
    assert level() == 1 and db.get_doc("a") == 1
    with pytest.raises(RuntimeError, match="durable"), db.transaction(), db.transaction(durable=True):
        db.put_doc("b", 1)
    assert db.get_doc("b") is None and level() == 1  # rolled back, nothing left open
    with pytest.raises(ValueError), db.transaction(durable=True):
        db.put_doc("c", 1)
        raise ValueError("crash inside")
    assert db.get_doc("c") is None and level() == 1


def test_an_address_has_one_owner(tmp_path: Path) -> None:
    db = open_state(tmp_path).db
    db.put_endpoint("c1/eth0", "10.9.0.2", {})
    with pytest.raises(Exception, match="UNIQUE"):
        db.put_endpoint("c2/eth0", "10.9.0.2", {})


@pytest.mark.parametrize("damage", list(Damage), ids=[d.value for d in Damage])
def test_damaged_database_is_set_aside_or_kept_whole(tmp_path: Path, damage: Damage) -> None:
    state = tmp_path / "state"
    fill(state)
    open_state(state).db.close()
    damage_file(db_path(state), damage)
    opened = open_state(state)
    rows = opened.db.endpoint_rows()
    if damage is Damage.APPENDED:  # the pages are intact: nothing lost, the whole file kept aside
        assert len(rows) == 20 and opened.damaged is None
        assert (state / "state.db.damaged").exists()
    elif damage is Damage.DELETED:
        assert rows == [] and opened.damaged is None
    else:  # a fresh store: the agent rebuilds it from the kernel
        assert rows == [] and opened.damaged and (state / "state.db.damaged").exists()
    assert stat.S_IMODE(db_path(state).stat().st_mode) == 0o600


@pytest.mark.parametrize("side", ["-wal", "-shm"])
@pytest.mark.parametrize("damage", list(Damage), ids=[d.value for d in Damage])
def test_damaged_wal_or_shm_after_a_crash_opens(tmp_path: Path, side: str, damage: Damage) -> None:
    """Copied while the writer still runs (as kill -9 leaves it): the store always opens; what
    a damaged WAL loses is a suffix of transactions, never half of one."""
    state, crashed = tmp_path / "state", tmp_path / "crashed"
    writer = fill(state)  # kept open while copying: a collected store would checkpoint the WAL away mid-copy
    shutil.copytree(state, crashed)
    del writer
    path = crashed / ("state.db" + side)
    assert path.exists()
    damage_file(path, damage)
    rows = open_state(crashed).db.endpoint_rows()
    keys = [k for k, _, _ in rows]
    assert keys == sorted(keys) and all(json.dumps(r) for _, _, r in rows)
    if side == "-shm" or damage is Damage.APPENDED:
        assert len(rows) == 20


def write_legacy(state: Path) -> list[Endpoint]:
    """The state dir exactly as the previous release wrote it (agent/persisting.write_json)."""
    (state / "endpoints").mkdir(parents=True)
    eps = [record(i) for i in range(3)]
    for ep in eps:
        name = hashlib.sha256(ep.key.encode()).hexdigest()[:24] + ".json"
        (state / "endpoints" / name).write_text(json.dumps(ep.model_dump(mode="json")))
    (state / "ipam.json").write_text(json.dumps({"cidr": "10.9.0.0/24", "cursor": 9, "allocations": {
        str(ep.ip): ep.key for ep in eps}}))
    ids = IdentityAllocator(CLUSTER_IDENTITY_MIN)
    ids.acquire(identity_labels({"app": "db"}, "shop", {}), "shop/p0")
    (state / "identities.json").write_text(json.dumps(ids.to_dict()))
    return eps


def test_upgrade_imports_the_json_files_once_and_keeps_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    eps = write_legacy(state)
    opened = open_state(state)
    assert opened.migrated == {"endpoints": 3, "damaged": 0, "ipam": 1, "identities": 1}
    assert [(k, ip) for k, ip, _ in opened.db.endpoint_rows()] == sorted((e.key, str(e.ip)) for e in eps)
    assert [Endpoint.model_validate(r) for _, _, r in opened.db.endpoint_rows()] == sorted(eps, key=lambda e: e.key)
    assert opened.db.get_doc("ipam")["cursor"] == 9
    book = IdentityBook(opened.db)
    assert book.loaded and book.allocator.lookup(identity_labels({"app": "db"}, "shop", {})) == CLUSTER_IDENTITY_MIN
    backup = state / LEGACY_BACKUP
    assert sorted(p.name for p in backup.iterdir()) == ["endpoints", "identities.json", "ipam.json"]
    assert len(list((backup / "endpoints").iterdir())) == 3
    assert not (state / "endpoints").exists() and not (state / "ipam.json").exists()
    opened.db.close()
    assert open_state(state).migrated == {}  # once


def test_upgrade_interrupted_before_the_move_imports_nothing_twice(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_legacy(state)
    open_state(state).db.close()
    shutil.move(str(state / LEGACY_BACKUP / "ipam.json"), state / "ipam.json")  # as if the move never ran
    db = open_state(state).db
    db.put_doc("ipam", {"cidr": "10.9.0.0/24", "cursor": 42})
    db.close()
    shutil.move(str(state / LEGACY_BACKUP / "ipam.json"), state / "ipam.json")  # interrupted once more
    opened = open_state(state)
    assert opened.db.get_doc("ipam")["cursor"] == 42  # the newer state is not overwritten
    assert len([p for p in (state / LEGACY_BACKUP).iterdir() if p.name.startswith("ipam.json")]) == 1


def test_upgrade_skips_a_damaged_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    write_legacy(state)
    victim = sorted((state / "endpoints").iterdir())[0]
    victim.write_bytes(b"\x00garbage")
    opened = open_state(state)
    assert opened.migrated["endpoints"] == 2 and opened.migrated["damaged"] == 1
    assert open_db(state).endpoint_rows() and not (state / "endpoints").exists()
