"""Standalone mode's local store of Kubernetes-format objects, persisted across restarts.

`membranectl apply -f` and `delete -f` land here. A batch is validated whole before
anything is stored: one bad object rejects the batch with the field and the reason, and
nothing already stored or enforced changes. Listeners hear about every change; the operator
stream feeds the same listeners in Kubernetes mode.

Persistence is a snapshot (`objects.json`) plus a journal (`objects.json.journal`, one JSON
line per changed object, fsynced before the batch is acknowledged or enforced): a batch costs
what it changes, not the size of the store (rewriting 10,000 Pods for one policy change took
100 ms). When the journal outgrows half the store, a new snapshot is written atomically and
the journal removed; replaying a journal over a snapshot that already has its changes is
harmless (entries are whole objects or deletions), and a torn last line (crash mid-write) is
ignored: its batch was never acknowledged.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from membrane.k8s_models import ObjectValidationError, parse_object

from .api_serving import RequestError
from .persisting import open_private, read_json, remove, write_json

ObjectKey = tuple[str, str, str]  # kind, namespace ("" when cluster-scoped), name
CLUSTER_SCOPED = frozenset({"Namespace", "Node"})
Listener = Callable[[str, ObjectKey, BaseModel | None], None]


def _describe(exc: ValidationError) -> list[str]:
    reasons = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()))
        reasons.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return reasons


class ObjectStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.objects: dict[ObjectKey, BaseModel] = {}
        self.raw: dict[ObjectKey, dict[str, Any]] = {}
        self.listeners: list[Listener] = []
        self.journal_path = path.with_name(path.name + ".journal")
        self.journal_entries = 0
        self.journal_torn = False
        self._counts: dict[str, int] = {}
        for data in read_json(path, default=[]) or []:
            self._put(self.key_of(data), parse_object(data), data)
        for entry in self._read_journal():
            key = (str(entry["key"][0]), str(entry["key"][1]), str(entry["key"][2]))
            if entry.get("data") is None:
                self._pop(key)
            else:
                self._put(key, parse_object(entry["data"]), entry["data"])
        if self.journal_torn:
            self.compact()  # appending after a torn line would hide every later entry

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

    def _read_journal(self) -> list[dict[str, Any]]:
        try:
            lines = self.journal_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                self.journal_torn = True
                break  # torn tail of a batch that was never acknowledged
        self.journal_entries = len(entries)
        return entries

    @staticmethod
    def key_of(data: dict[str, Any]) -> ObjectKey:
        meta = data.get("metadata") or {}
        kind = str(data.get("kind", ""))
        namespace = "" if kind in CLUSTER_SCOPED else str(meta.get("namespace") or "default")
        return kind, namespace, str(meta.get("name", ""))

    def _validate(self, documents: list[Any]) -> list[tuple[ObjectKey, BaseModel, dict[str, Any]]]:
        parsed, problems = [], []
        for index, data in enumerate(documents):
            if not isinstance(data, dict):
                problems.append(f"document {index}: not an object")
                continue
            label = f"{data.get('kind', '?')} {(data.get('metadata') or {}).get('name', '?')}"
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
            parsed.append((key, obj, data))
        if problems:
            raise RequestError("rejected: " + "; ".join(problems), code=422, details=problems)
        return parsed

    def apply(self, documents: list[Any]) -> list[dict[str, str]]:
        with self.lock:
            parsed = self._validate(documents)
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
            changed = []
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
        for key, obj in changed:
            self._notify(key, obj)

    def get(self, kind: str, namespace: str, name: str) -> BaseModel | None:
        with self.lock:
            return self.objects.get((kind, namespace, name))

    def list(self, kind: str) -> list[BaseModel]:
        with self.lock:
            return [obj for key, obj in sorted(self.objects.items(), key=lambda kv: kv[0]) if key[0] == kind]

    def _persist(self, keys: list[ObjectKey]) -> None:
        """Journal the current state of `keys` (durable on return); compact when it is long."""
        if self.journal_entries + len(keys) > max(256, len(self.raw) // 2):
            self.compact()
            return
        lines = "".join(json.dumps({"key": list(key), "data": self.raw.get(key)}, separators=(",", ":")) + "\n"
                        for key in keys)
        with open_private(self.journal_path, "a") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
        self.journal_entries += len(keys)

    def compact(self) -> None:
        """Write the whole store as a snapshot and drop the journal."""
        with self.lock:
            write_json(self.path, [self.raw[key] for key in sorted(self.raw)])
            remove(self.journal_path, durable=True)
            self.journal_entries = 0

    def _notify(self, key: ObjectKey, obj: BaseModel | None) -> None:
        for listener in list(self.listeners):
            listener(key[0], key, obj)
