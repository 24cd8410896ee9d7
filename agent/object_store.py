"""Standalone mode's local store of Kubernetes-format objects, persisted across restarts.

`membranectl apply -f` and `delete -f` land here. A batch is validated whole before
anything is stored: one bad object rejects the batch with the field and the reason, and
nothing already stored or enforced changes. Listeners hear about every change; the operator
stream feeds the same listeners in Kubernetes mode.

Persistence: one row per object in state.db (agent/state_db.py), the object as it was applied.
A batch writes the rows it changes and its batch number in ONE durable transaction
(`synchronous=FULL`: applied objects exist nowhere else, and the answer says they are stored),
before the batch is acknowledged or enforced: a crash at any point leaves all of the batch or
none of it. The memory copy changes only after the commit.

After each commit the batch number goes to the kernel's state witness (datapath/witness.py).
Loading checks it: a store that ends before the witness (a lost log, an older copy of the
database) is damaged, never read as fewer objects. Pods and policies exist only here, so a
damaged store keeps a `.damaged` copy and the agent refuses to start, naming the file and the
fix (`--accept-state-loss` starts empty instead).

Upgrade: the first load on a state dir of an earlier release imports its `objects.json` and
`objects.json.journal` (agent/legacy_reading.py) in one transaction with their batch number,
then moves them to `pre-sqlite/`.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from membrane.k8s_models import ObjectValidationError, parse_object
from membrane.labels import shown
from membrane.service_models import Service
from membrane.strict_fields import strict_errors

from . import failpoints, legacy_reading
from .api_serving import RequestError
from .datapath.witness import Mark, MemoryWitness, Slot, Witness
from .state_db import StateDb
from .state_files import ACCEPT_LOSS_FLAG, DamagedFile, StateDamaged, damaged_path, set_aside

log = logging.getLogger("membrane.state")

ObjectKey = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name
Listener = Callable[[str, ObjectKey, BaseModel | None], None]
SEQ_META = "objects-seq"  # the number of the last batch stored
MIGRATED_META = "objects-migrated-from-json"
Change = tuple[ObjectKey, dict[str, Any] | None]  # the object as applied, None: deleted


def _describe(exc: ValidationError) -> list[str]:
    reasons = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()))
        reasons.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return reasons


class ObjectStore:
    """Load with `load()` (after the datapath: the witness is a pinned map). `db` is the
    agent's state store, or a state dir (tests and tools: its store is opened)."""

    def __init__(self, db: StateDb | Path) -> None:
        if isinstance(db, Path):
            from .state_storing import open_state
            db = open_state(db).db
        self.db = db
        self.state_dir = db.path.parent
        self.path = db.path
        self.lock = threading.RLock()
        self.objects: dict[ObjectKey, BaseModel] = {}
        self.raw: dict[ObjectKey, dict[str, Any]] = {}
        self.listeners: list[Listener] = []
        self.seq = 0  # batches stored so far (the witness holds the last durable one)
        self.witness: Witness | MemoryWitness = MemoryWitness()
        self._counts: dict[str, int] = {}

    def load(self, witness: Witness | MemoryWitness | None = None, accept_loss: bool = False) -> dict[str, Any]:
        """Read the store (importing an earlier release's files once), check it against the
        witness; StateDamaged if damaged."""
        if witness is not None:
            self.witness = witness
        mark = self.witness.get(Slot.OBJECT_STORE)
        migrated: int | None = None
        with self.lock:
            try:
                migrated = self._migrate(mark)
                self._read(mark)
            except DamagedFile as exc:
                self._damaged(exc, accept_loss)
            self.witness.set(Slot.OBJECT_STORE, Mark(self.seq, 0))
        return {"objects": len(self.raw), "seq": self.seq, "witness": mark.seq if mark else None,
                **({"migrated": migrated} if migrated is not None else {})}

    def _damaged(self, exc: DamagedFile, accept_loss: bool) -> None:
        legacy = legacy_reading.objects_files(self.state_dir)
        if not accept_loss:
            for path in legacy:
                set_aside(path, keep_original=True)
            if exc.path == self.path and self.db.damaged_before is None:
                self.db.copy_to(damaged_path(self.path))
            files = " and ".join(p.name for p in legacy) if exc.path != self.path else self.path.name
            raise StateDamaged(exc.path, exc.reason, (
                "the kernel cannot rebuild it (Pods and policies exist only in this store): restore "
                f"{files} from a backup, or start once with "
                f"{ACCEPT_LOSS_FLAG} to begin with an empty store and apply your objects again")) from None
        log.warning("object store damaged: starting empty (--accept-state-loss)",
                    extra={"fields": {"file": str(exc.path), "error": exc.reason}})
        for path in legacy:
            set_aside(path)
        if exc.path == self.path and self.db.damaged_before is None:  # else the damaged file itself is kept
            self.db.copy_to(damaged_path(self.path))
        with self.db.transaction(durable=True):
            self.db.clear_objects()
            self.db.put_meta(SEQ_META, "0")
            self.db.put_meta(MIGRATED_META, "accepted loss")
        self.objects, self.raw, self._counts, self.seq = {}, {}, {}, 0

    def _migrate(self, mark: Mark | None) -> int | None:
        """Import an earlier release's snapshot + journal once; how many objects, None if none."""
        legacy = legacy_reading.objects_files(self.state_dir)
        if not legacy:
            return None
        found = None
        if self.db.get_meta(MIGRATED_META) is None:
            found = legacy_reading.read_objects(self.state_dir, mark)
            with self.db.transaction(durable=True):
                self.db.clear_objects()
                for key, data in found.raw.items():
                    self.db.put_object(key, data)
                self.db.put_meta(SEQ_META, str(found.seq))
                self.db.put_meta(MIGRATED_META, legacy[0].name)
        from .state_storing import keep_legacy  # after the commit: a crash here imports nothing twice
        keep_legacy(self.state_dir, legacy)
        if found is None:
            return 0
        log.warning("object store imported from the previous release's files; they are kept as a backup",
                    extra={"fields": {"objects": len(found.raw), "seq": found.seq, "salvaged": found.salvaged}})
        return len(found.raw)

    def _read(self, mark: Mark | None) -> None:
        """Fill the store from state.db; DamagedFile when it ends before the witness's batch."""
        self.objects, self.raw, self._counts = {}, {}, {}
        for key, text in self.db.object_rows():
            try:
                data = json.loads(text)
                self._put(key, parse_object(data), data)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise DamagedFile(self.path, f"object {'/'.join(key)} does not parse: "
                                             f"{str(exc).splitlines()[0]}") from None
        self.seq = int(self.db.get_meta(SEQ_META) or 0)
        if mark is not None and self.seq < mark.seq:
            raise DamagedFile(self.path, f"cut short: the store ends at batch {self.seq}, the kernel's witness "
                                         f"says {mark.seq} were stored")

    def _put(self, key: ObjectKey, obj: BaseModel, data: dict[str, Any]) -> None:
        if key not in self.objects:
            self._counts[key[0]] = self._counts.get(key[0], 0) + 1
        self.objects[key], self.raw[key] = obj, data

    def _pop(self, key: ObjectKey) -> BaseModel | None:
        found = self.objects.pop(key, None)
        self.raw.pop(key, None)
        if found is not None:
            self._counts[key[0]] -= 1
        return found

    def count(self, kind: str) -> int:
        return self._counts.get(kind, 0)

    key_of = staticmethod(legacy_reading.object_key)  # the key the earlier formats used too

    def _validate(self, documents: list[Any], strict: bool = False) -> list[tuple[ObjectKey, BaseModel, dict[str, Any]]]:
        """Every document parsed, or RequestError(422) naming each problem with its field path.
        `strict` (what users apply): unknown fields and wrong JSON types are problems too,
        as with `kubectl apply --validate=strict`, never dropped."""
        parsed: list[tuple[ObjectKey, BaseModel, dict[str, Any]]] = []
        problems: list[str] = []
        for index, data in enumerate(documents):
            if not isinstance(data, dict):
                problems.append(f"document {index}: not an object")
                continue
            meta_in: dict[str, Any] = data["metadata"] if isinstance(data.get("metadata"), dict) else {}
            label = f"{shown(str(data.get('kind', '?')), quote=False)} {shown(str(meta_in.get('name', '?')), quote=False)}"
            if strict:
                unknown = strict_errors(data)
                if unknown:
                    problems.extend(f"{label}: {err}" for err in unknown)
                    continue
            key = self.key_of(data)
            meta = data.get("metadata")
            if key[1] and isinstance(meta, dict) and not meta.get("namespace"):
                data = {**data, "metadata": {**meta, "namespace": key[1]}}
            try:
                obj = parse_object(data)
            except ValidationError as exc:
                problems.extend(f"{label}: {reason}" for reason in _describe(exc))
                continue
            except ObjectValidationError as exc:
                problems.extend(f"{label}: {err}" for err in exc.errors)
                continue
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(f"{label}: {exc}")
                continue
            if strict and isinstance(obj, Service) and obj.unallocated():
                problems.extend(f"{label}: {err}" for err in obj.unallocated())  # nobody allocates them here
                continue
            parsed.append((key, obj, data))
        if problems:
            raise RequestError("rejected: " + "; ".join(problems), code=422, details=problems)
        return parsed

    def apply(self, documents: list[Any]) -> list[dict[str, str]]:
        with self.lock:
            parsed = self._validate(documents, strict=True)
            outcome: builtins.list[dict[str, str]] = []
            pending: dict[ObjectKey, dict[str, Any]] = {}
            models: dict[ObjectKey, BaseModel] = {}
            for key, obj, data in parsed:
                before = pending.get(key, self.raw.get(key))
                action = "created" if before is None else ("unchanged" if before == data else "configured")
                outcome.append({"kind": key[0], "namespace": key[1], "name": key[2], "action": action})
                if action != "unchanged":
                    pending[key], models[key] = data, obj
            changes: builtins.list[Change] = list(pending.items())
            self._commit(changes, models)
        for key, _ in changes:
            self._notify(key, models[key])
        return outcome

    def delete(self, documents: list[Any]) -> list[dict[str, str]]:
        with self.lock:
            keys = [self.key_of(d) for d in documents if isinstance(d, dict)]
            outcome: builtins.list[dict[str, str]] = []
            gone: dict[ObjectKey, None] = {}
            for key in keys:
                found = key in self.raw and key not in gone
                outcome.append({"kind": key[0], "namespace": key[1], "name": key[2],
                                "action": "deleted" if found else "not found"})
                if found:
                    gone[key] = None
            changes: builtins.list[Change] = list(gone.items())
            self._commit(changes, {})
        for key, _ in changes:
            self._notify(key, None)
        return outcome

    def saved(self, documents: list[Any]) -> dict[ObjectKey, dict[str, Any] | None]:
        """What the store holds now under the keys of `documents` (None: nothing), for `restore`."""
        with self.lock:
            keys = {self.key_of(d) for d in documents if isinstance(d, dict)}
            return {key: self.raw.get(key) for key in keys}

    def restore(self, saved: dict[ObjectKey, dict[str, Any] | None]) -> None:
        """Put back what `saved` recorded (a change the datapath refused): one batch, listeners told."""
        with self.lock:
            changes = [(key, data) for key, data in saved.items() if self.raw.get(key) != data]
            models: dict[ObjectKey, BaseModel] = {key: parse_object(data) for key, data in changes if data is not None}
            self._commit(changes, models)
        for key, _ in changes:
            self._notify(key, models.get(key))

    def get(self, kind: str, namespace: str, name: str) -> BaseModel | None:
        with self.lock:
            return self.objects.get((kind, namespace, name))

    def list(self, kind: str) -> list[BaseModel]:
        with self.lock:
            return [obj for key, obj in sorted(self.objects.items(), key=lambda kv: kv[0]) if key[0] == kind]

    def _commit(self, changes: builtins.list[Change], models: dict[ObjectKey, BaseModel]) -> None:
        """Store `changes` as the next batch: its rows and its number in one durable transaction,
        then the witness, then the memory copy (a failed commit changes nothing)."""
        if not changes:
            return
        seq = self.seq + 1
        with self.db.transaction(durable=True):
            for index, (key, data) in enumerate(changes):
                if index == len(changes) // 2:
                    failpoints.hit("store.in-batch")  # half the rows written, not committed
                if data is None:
                    self.db.delete_object(key)
                else:
                    self.db.put_object(key, data)
            self.db.put_meta(SEQ_META, str(seq))
        failpoints.hit("store.after-commit")  # committed, the witness not yet moved
        self.seq = seq
        self.witness.set(Slot.OBJECT_STORE, Mark(seq, 0))
        for key, data in changes:
            if data is None:
                self._pop(key)
            else:
                self._put(key, models[key], data)

    def _notify(self, key: ObjectKey, obj: BaseModel | None) -> None:
        for listener in list(self.listeners):
            listener(key[0], key, obj)
