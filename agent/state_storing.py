"""Opening the agent's state store: damage handling and the one-time upgrade from JSON files.

`state.db` holds what the kernel can rebuild (endpoint records from the veths' aliases and the
endpoint map, the IPAM cursor, the identity numbering from the endpoint map and the store). So
a database SQLite cannot read is set aside as `state.db.damaged` (its -wal/-shm with it) and a
fresh one is started; the agent then rebuilds its contents from the kernel and no pod is torn
down.

Upgrade in place: an agent of the previous release left `endpoints/*.json`, `ipam.json` and
`identities.json`. The first start imports them into `state.db` in one transaction (damaged
ones are skipped: the kernel rebuilds them, as before) and then moves them into `pre-sqlite/`,
kept as a backup, never deleted. A crash between the import and the move imports nothing twice
(the import is recorded in the database).
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
from .state_files import DamagedFile, read_json_checked, set_aside

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


def open_state(state_dir: Path) -> OpenedState:
    path = db_path(state_dir)
    damaged = None
    try:
        db = open_db(state_dir)
    except DamagedFile as exc:
        damaged = exc.reason
        log.warning("state database damaged: set aside, its contents are rebuilt from the kernel",
                    extra={"fields": {"file": str(path), "error": exc.reason}})
        for each in (path, *side_paths(path)):
            set_aside(each)
        db = open_db(state_dir)
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
    backup = state_dir / LEGACY_BACKUP
    private_dir(backup)
    for path in legacy:
        target = backup / path.name
        if target.exists():  # an earlier backup: keep both
            target = backup / f"{path.name}.{int(time.time())}"
        os.replace(path, target)
    log.warning("state imported from the previous release's files; they are kept as a backup",
                extra={"fields": {"into": str(db.path), "backup": str(backup), **report}})
    return report


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
