"""Opening the agent's state store: damage handling and the one-time upgrade from JSON files.

`state.db` holds what the kernel can rebuild (endpoint records from the veths' aliases and the
endpoint map, the IPAM cursor, the identity numbering from the endpoint map and the store), the
Kubernetes-mode cluster cache (refetched from the operator) and, in standalone mode, the object
store, which nothing can rebuild. So in Kubernetes mode a database SQLite cannot read is set
aside as `state.db.damaged` (its -wal/-shm with it) and a fresh one is started: the agent
rebuilds its contents from the kernel and the operator, and no pod is torn down. In standalone
mode the start is refused, naming the file and the fix, unless `--accept-state-loss`.

Upgrade in place: earlier releases left `endpoints/*.json`, `ipam.json` and `identities.json`
(imported here), `objects.json` + `objects.json.journal` (agent/object_store.py) and
`cluster-state.json` + `cluster-journal.jsonl` (agent/cluster_persisting.py). Each set is
imported once, in one transaction (damaged endpoint files are skipped: the kernel rebuilds
them), and then moved into `pre-sqlite/`, kept as a backup, never deleted. A crash between the
import and the move imports nothing twice (the import is recorded in the database).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from membrane.identities import IdentityAllocator

from .persisting import private_dir
from .state_db import StateDb, db_path, open_db, side_paths
from .state_files import ACCEPT_LOSS_FLAG, DamagedFile, StateDamaged, read_json_checked, set_aside

log = logging.getLogger("membrane.state")

LEGACY_BACKUP = "pre-sqlite"
LEGACY_FILES = ("endpoints", "ipam.json", "identities.json")
MIGRATED_META = "migrated-from-json"
IDENTITIES_DOC = "identities"


@dataclass
class OpenedState:
    db: StateDb
    damaged: str | None = None  # why the previous database was set aside
    migrated: dict[str, int] = field(default_factory=dict)


def open_state(state_dir: Path, keep_damaged: bool = False) -> OpenedState:
    """Open state.db (importing an earlier release's endpoint/IPAM/identity files once).

    A database SQLite cannot read is set aside (moved to `state.db.damaged`) and a fresh one
    started: what the kernel holds rebuilds the endpoints and identities, the operator the
    cluster cache. With `keep_damaged` (standalone mode: the database holds the object store,
    which nothing can rebuild) it is left in place instead, a copy kept, and StateDamaged
    refuses the start with the file and the fix (`--accept-state-loss` sets it aside)."""
    path = db_path(state_dir)
    damaged = None
    try:
        db = open_db(state_dir)
    except DamagedFile as exc:
        damaged = exc.reason
        if keep_damaged:
            set_aside(path, keep_original=True)
            raise StateDamaged(path, exc.reason, (
                "the kernel cannot rebuild it (Pods and policies given to this agent exist only in its "
                f"object store): restore {path.name} from a backup, or start once with {ACCEPT_LOSS_FLAG} "
                "to set it aside, rebuild the endpoints from the kernel and begin with an empty store")) from None
        log.warning("state database damaged: set aside, its contents are rebuilt from the kernel",
                    extra={"fields": {"file": str(path), "error": exc.reason}})
        for each in (path, *side_paths(path)):
            set_aside(each)
        db = open_db(state_dir)
        db.damaged_before = damaged
    return OpenedState(db, damaged, migrate_legacy(state_dir, db))


def migrate_legacy(state_dir: Path, db: StateDb) -> dict[str, int]:
    """Import the previous release's files once, then move them to `pre-sqlite/`."""
    legacy = [state_dir / name for name in LEGACY_FILES if (state_dir / name).exists()]
    if not legacy:
        return {}
    report = {"endpoints": 0, "damaged": 0, "ipam": 0, "identities": 0}
    if db.get_meta(MIGRATED_META) is None:
        with db.transaction():
            _import_endpoints(state_dir / "endpoints", db, report)
            _import_ipam(state_dir / "ipam.json", db, report)
            _import_identities(state_dir / "identities.json", db, report)
            db.put_meta(MIGRATED_META, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    backup = keep_legacy(state_dir, legacy)
    log.warning("state imported from the previous release's files; they are kept as a backup",
                extra={"fields": {"into": str(db.path), "backup": str(backup), **report}})
    return report


def keep_legacy(state_dir: Path, paths: list[Path]) -> Path:
    """Move imported files into `pre-sqlite/` (kept as a backup, never deleted)."""
    backup = state_dir / LEGACY_BACKUP
    private_dir(backup)
    for path in paths:
        target = backup / path.name
        if target.exists():  # an earlier backup: keep both
            target = backup / f"{path.name}.{int(time.time())}"
        os.replace(path, target)
    return backup


def _import_endpoints(directory: Path, db: StateDb, report: dict[str, int]) -> None:
    from .endpoints import Endpoint  # the record's schema (endpoints imports this module lazily)

    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data, _ = read_json_checked(path)
            ep = Endpoint.model_validate(data)
        except (DamagedFile, ValueError) as exc:
            log.warning("endpoint record damaged: rebuilt from the kernel if its link exists",
                        extra={"fields": {"file": str(path), "error": str(exc).splitlines()[0]}})
            report["damaged"] += 1
            continue
        db.put_endpoint(ep.key, str(ep.ip), ep.model_dump(mode="json"))
        report["endpoints"] += 1


def _import_ipam(path: Path, db: StateDb, report: dict[str, int]) -> None:
    try:
        data, _ = read_json_checked(path)
    except DamagedFile:
        report["damaged"] += 1  # only a cursor
        return
    if isinstance(data, dict) and isinstance(data.get("cursor"), int):
        db.put_doc("ipam", {"cidr": str(data.get("cidr", "")), "cursor": data["cursor"]})
        report["ipam"] = 1


def _import_identities(path: Path, db: StateDb, report: dict[str, int]) -> None:
    try:
        data, _ = read_json_checked(path)
        if data is None:
            return
        IdentityAllocator.from_dict(data)  # readable, or rebuilt from the endpoint map
    except (DamagedFile, ValueError, KeyError, TypeError, AttributeError):
        report["damaged"] += 1
        return
    db.put_doc(IDENTITIES_DOC, data)
    report["identities"] = 1
