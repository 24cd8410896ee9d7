"""The node's identity allocations (standalone mode): pods -> security identities, persisted.

Same labels give the same number, across restarts too: the allocator's numbering is written
to the state store (one document) when numbers were handed out (once per batch, `flush`) or freed, before they are
used in a BPF map.
Who holds an identity is not persisted: a restarted agent re-assigns every pod it knows, and
numbers nobody claims again age out after the grace period.

A missing or unreadable document is rebuilt from the kernel: the endpoint
map holds the identity of every local pod, the store its labels (`recover`), so every pod
keeps its number and no map entry changes.
"""

from __future__ import annotations

import time
from pathlib import Path

from membrane.identities import (
    CLUSTER_IDENTITY_MIN,
    IdentityAllocator,
    LabelSet,
    ReservedIdentity,
    identity_labels,
    reserved_labels,
)
from membrane.k8s_models import ObjectRef

from .state_db import StateDb

DOC = "identities"

GRACE_SECONDS = 60.0  # an unused identity keeps its number this long (a pod being recreated)


class IdentityBook:
    def __init__(self, db: StateDb | Path) -> None:
        if isinstance(db, Path):  # tests and tools: the state store of the directory the path is in
            from .state_storing import open_state
            db = open_state(db.parent).db
        self.db = db
        self.damaged: str | None = None
        try:
            saved = db.get_doc(DOC)
            self.allocator = IdentityAllocator.from_dict(saved) if saved else self._fresh()
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.damaged = str(exc).splitlines()[0]
            saved, self.allocator = None, self._fresh()
        self.loaded = bool(saved)  # False: missing or damaged, `recover` rebuilds it
        self.held: dict[ObjectRef, LabelSet] = {}
        self.unsaved = False  # numbers handed out since the last save (`flush`)
        now = time.time()
        for identity, labels in self.allocator.items().items():
            for owner in self.allocator.owners_of(identity):
                self.allocator.release(labels, owner, now)  # re-claimed by assign() at start-up

    @staticmethod
    def _fresh() -> IdentityAllocator:
        return IdentityAllocator(CLUSTER_IDENTITY_MIN, grace=GRACE_SECONDS)

    def recover(self, in_use: dict[LabelSet, int]) -> int:
        """Rebuild the numbering from the identities the kernel's maps use (labels -> number);
        returns how many were restored. Persisted at once."""
        restored = sum(1 for labels, number in sorted(in_use.items(), key=lambda kv: kv[1])
                       if self.allocator.claim(number, labels))
        if restored or not self.loaded:
            self._save()
        self.loaded = True
        return restored

    def assign(self, ref: ObjectRef, pod_labels: dict[str, str], ns_labels: dict[str, str]) -> int:
        """The identity of a pod with these labels; moves the pod off its old one."""
        labels = identity_labels(pod_labels, ref.namespace, ns_labels)
        old = self.held.get(ref)
        if old == labels:
            number = self.allocator.lookup(labels)
            assert number is not None
            return number
        fresh = self.allocator.lookup(labels) is None
        number = self.allocator.acquire(labels, str(ref))
        if old is not None:
            self.allocator.release(old, str(ref), time.time())
        self.held[ref] = labels
        if fresh:
            self.unsaved = True  # saved by `flush()`, once per batch, before any map uses it
        return number

    def flush(self) -> None:
        """Persist the numbering if new numbers were handed out (the policy manager calls
        this before writing maps: one write per batch instead of one per new identity)."""
        if self.unsaved:
            self._save()

    def release(self, ref: ObjectRef) -> None:
        old = self.held.pop(ref, None)
        if old is not None:
            self.allocator.release(old, str(ref), time.time())

    def gc(self) -> list[int]:
        freed = self.allocator.gc(time.time())
        if freed:
            self._save()
        return freed

    def identity_of(self, ref: ObjectRef) -> int | None:
        labels = self.held.get(ref)
        return self.allocator.lookup(labels) if labels is not None else None

    def listing(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [
            {"identity": int(r), "labels": reserved_labels(r).to_strings(), "owners": [], "reserved": True}
            for r in ReservedIdentity]
        for number, labels in sorted(self.allocator.items().items()):
            rows.append({"identity": number, "labels": labels.to_strings(),
                         "owners": sorted(self.allocator.owners_of(number)), "reserved": False})
        return rows

    def _save(self) -> None:
        self.db.put_doc(DOC, self.allocator.to_dict())
        self.unsaved = False
