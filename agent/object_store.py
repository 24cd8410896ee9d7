"""Standalone mode's local store of Kubernetes-format objects, persisted across restarts.

`membranectl apply -f` and `delete -f` land here. A batch is validated whole before
anything is stored: one bad object rejects the batch with the field and the reason, and
nothing already stored or enforced changes. Listeners hear about every change; the operator
stream feeds the same listeners in Kubernetes mode.

Persistence is a snapshot (`objects.json`: `{"seq": N, "objects": [...]}`) plus a journal
(`objects.json.journal`, one JSON line per batch: its sequence number and the objects it changed,
fsynced before the batch is acknowledged or enforced): a batch costs what it changes, not the
size of the store (rewriting 10,000 Pods for one policy change took 100 ms). When the journal
outgrows half the store, a new snapshot is written atomically and the journal removed. A torn
last line (crash mid-write) is ignored: its batch was never acknowledged.

After each durable write the batch's sequence number goes to the kernel's state witness
(datapath/witness.py). Loading checks it: a store that ends before the witness (a truncated,
deleted or older file) is damaged, never read as fewer objects. Pods and policies exist only
here, so a damaged store is set aside and the agent refuses to start, naming the file and the
fix (`--accept-state-loss` starts empty instead); appended bytes after a complete snapshot
are dropped when what remains reaches the witness.
"""

from __future__ import annotations

import builtins
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from membrane.k8s_models import PREFILTER_KINDS, ObjectValidationError, parse_object
from membrane.labels import shown
from membrane.service_models import Service
from membrane.strict_fields import strict_errors

from .api_serving import RequestError
from .datapath.witness import Mark, MemoryWitness, Slot, Witness
from .persisting import open_private, remove, write_json
from .state_files import ACCEPT_LOSS_FLAG, DamagedFile, StateDamaged, read_json_checked, set_aside

ObjectKey = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name
CLUSTER_SCOPED = frozenset({"Namespace", "Node", *PREFILTER_KINDS})
Listener = Callable[[str, ObjectKey, BaseModel | None], None]


def _describe(exc: ValidationError) -> list[str]:
    reasons = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()))
        reasons.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return reasons


def _is_batch(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


class ObjectStore:
    """Load with `load()` (after the datapath: the witness is a pinned map)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.objects: dict[ObjectKey, BaseModel] = {}
        self.raw: dict[ObjectKey, dict[str, Any]] = {}
        self.listeners: list[Listener] = []
        self.journal_path = path.with_name(path.name + ".journal")
        self.journal_entries = 0
        self.seq = 0  # batches stored so far (the witness holds the last durable one)
        self.witness: Witness | MemoryWitness = MemoryWitness()
        self._counts: dict[str, int] = {}

    def load(self, witness: Witness | MemoryWitness | None = None, accept_loss: bool = False) -> dict[str, Any]:
        """Read snapshot and journal, check them against the witness; StateDamaged if damaged."""
        if witness is not None:
            self.witness = witness
        mark = self.witness.get(Slot.OBJECT_STORE)
        with self.lock:
            try:
                repaired = self._read(mark)
            except DamagedFile as exc:
                if not accept_loss:
                    for path in (self.path, self.journal_path):
                        if path.exists():
                            set_aside(path, keep_original=True)
                    raise StateDamaged(exc.path, exc.reason, (
                        "the kernel cannot rebuild it (Pods and policies exist only in this store): restore "
                        f"{self.path.name} and {self.journal_path.name} from a backup, or start once with "
                        f"{ACCEPT_LOSS_FLAG} to begin with an empty store and apply your objects again")) from None
                for path in (self.path, self.journal_path):
                    set_aside(path)
                self.objects, self.raw, self._counts, self.seq = {}, {}, {}, 0
                repaired = True
            if repaired:  # what was dropped is kept aside
                for path in (self.path, self.journal_path):
                    if path.exists():
                        set_aside(path, keep_original=True)
            if repaired or self.journal_entries:
                self.compact()  # a clean snapshot per start; never append after a torn line
            else:
                self.witness.set(Slot.OBJECT_STORE, Mark(self.seq, 0))
        return {"objects": len(self.raw), "seq": self.seq, "witness": mark.seq if mark else None,
                "repaired": repaired}

    def _read(self, mark: Mark | None) -> bool:
        """Fill the store from disk; True when something was dropped (a torn or appended tail)."""
        data, salvaged = read_json_checked(self.path)
        if data is not None and not isinstance(data, (dict, list)):
            raise DamagedFile(self.path, "not a store snapshot")
        snapshot: dict[str, Any] = data if isinstance(data, dict) else {"seq": 0, "objects": data or []}
        try:
            self.seq = int(snapshot.get("seq", 0))
            for item in snapshot.get("objects", []):
                self._put(self.key_of(item), parse_object(item), item)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DamagedFile(self.path, f"an object does not parse: {str(exc).splitlines()[0]}") from None
        torn = self._replay_journal()
        if mark is not None and self.seq < mark.seq:
            if not self.path.exists() and not self.journal_path.exists():
                raise DamagedFile(self.path, f"missing, but the kernel's witness says {mark.seq} batches were stored")
            where = self.journal_path if self.journal_path.exists() or self.path.exists() else self.path
            raise DamagedFile(where, f"{'missing' if not where.exists() else 'cut short'}: the store ends at "
                                     f"batch {self.seq}, the kernel's witness says {mark.seq} were stored")
        return salvaged or torn

    def _replay_journal(self) -> bool:
        try:
            raw = self.journal_path.read_bytes()
        except FileNotFoundError:
            return False
        if not raw.strip():
            raise DamagedFile(self.journal_path, "empty")
        lines = raw.split(b"\n")
        torn = False
        self.journal_entries = 0
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                if "key" in entry:  # a line of the format before batches had numbers
                    changes, seq = [[entry["key"], entry.get("data")]], None
                else:
                    changes, seq = entry["changes"], int(entry["seq"])
            except (ValueError, KeyError, TypeError):
                if any(_is_batch(rest) for rest in lines[number + 1:]):
                    raise DamagedFile(self.journal_path, f"line {number + 1} is garbage and batches follow it") from None
                torn = True  # the torn tail of a batch that was never acknowledged
                break
            if seq is not None and seq <= self.seq:
                continue  # already in the snapshot (a compaction interrupted before the removal)
            if seq is not None and seq != self.seq + 1:
                raise DamagedFile(self.path, f"batches {self.seq + 1}..{seq - 1} are missing before the journal")
            try:
                for key_parts, data in changes:
                    key = (str(key_parts[0]), str(key_parts[1]), str(key_parts[2]))
                    if data is None:
                        self._pop(key)
                    else:
                        self._put(key, parse_object(data), data)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise DamagedFile(self.journal_path,
                                  f"line {number + 1} does not parse: {str(exc).splitlines()[0]}") from None
            self.seq = seq if seq is not None else self.seq
            self.journal_entries += len(changes)
        return torn

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

    @staticmethod
    def key_of(data: dict[str, Any]) -> ObjectKey:
        meta = data.get("metadata") or {}
        kind = str(data.get("kind", ""))
        namespace = "" if kind in CLUSTER_SCOPED else str(meta.get("namespace") or "default")
        return kind, namespace, str(meta.get("name", ""))

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
            outcome, changed = [], []
            for key, obj, data in parsed:
                before = self.raw.get(key)
                action = "created" if before is None else ("unchanged" if before == data else "configured")
                outcome.append({"kind": key[0], "namespace": key[1], "name": key[2], "action": action})
                if action != "unchanged":
                    self._put(key, obj, data)
                    changed.append((key, obj))
            if changed:
                self._persist([key for key, _ in changed])
        for key, obj in changed:
            self._notify(key, obj)
        return outcome

    def delete(self, documents: list[Any]) -> list[dict[str, str]]:
        with self.lock:
            keys = [self.key_of(d) for d in documents if isinstance(d, dict)]
            outcome, gone = [], []
            for key in keys:
                found = self._pop(key)
                outcome.append({"kind": key[0], "namespace": key[1], "name": key[2],
                                "action": "deleted" if found is not None else "not found"})
                if found is not None:
                    gone.append(key)
            if gone:
                self._persist(gone)
        for key in gone:
            self._notify(key, None)
        return outcome

    def saved(self, documents: list[Any]) -> dict[ObjectKey, dict[str, Any] | None]:
        """What the store holds now under the keys of `documents` (None: nothing), for `restore`."""
        with self.lock:
            keys = {self.key_of(d) for d in documents if isinstance(d, dict)}
            return {key: self.raw.get(key) for key in keys}

    def restore(self, saved: dict[ObjectKey, dict[str, Any] | None]) -> None:
        """Put back what `saved` recorded (a change the datapath refused): persisted, listeners told."""
        with self.lock:
            changed: list[tuple[ObjectKey, BaseModel | None]] = []
            for key, data in saved.items():
                if self.raw.get(key) == data:
                    continue
                if data is None:
                    self._pop(key)
                    changed.append((key, None))
                else:
                    obj = parse_object(data)
                    self._put(key, obj, data)
                    changed.append((key, obj))
            if changed:
                self._persist([key for key, _ in changed])
        for key, changed_obj in changed:
            self._notify(key, changed_obj)

    def get(self, kind: str, namespace: str, name: str) -> BaseModel | None:
        with self.lock:
            return self.objects.get((kind, namespace, name))

    def list(self, kind: str) -> list[BaseModel]:
        with self.lock:
            return [obj for key, obj in sorted(self.objects.items(), key=lambda kv: kv[0]) if key[0] == kind]

    def _persist(self, keys: builtins.list[ObjectKey]) -> None:
        """Journal the current state of `keys` as one batch (durable on return, then witnessed);
        compact when the journal is long."""
        if self.journal_entries + len(keys) > max(256, len(self.raw) // 2):
            self.seq += 1
            self.compact()
            return
        line = json.dumps({"seq": self.seq + 1, "changes": [[list(key), self.raw.get(key)] for key in keys]},
                          separators=(",", ":")) + "\n"
        with open_private(self.journal_path, "a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        self.seq += 1
        self.journal_entries += len(keys)
        self.witness.set(Slot.OBJECT_STORE, Mark(self.seq, 0))

    def compact(self) -> None:
        """Write the whole store as a snapshot and drop the journal."""
        with self.lock:
            write_json(self.path, {"seq": self.seq, "objects": [self.raw[key] for key in sorted(self.raw)]})
            self.witness.set(Slot.OBJECT_STORE, Mark(self.seq, 0))
            remove(self.journal_path, durable=True)
            self.journal_entries = 0

    def _notify(self, key: ObjectKey, obj: BaseModel | None) -> None:
        for listener in list(self.listeners):
            listener(key[0], key, obj)
