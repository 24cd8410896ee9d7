"""The node's identity numbering (standalone mode): the one local allocator, persisted.

Standalone mode's source (agent/local_source.py, through agent/store_syncing.py) numbers the
label sets its pods need with this allocator, as the operator's leader does cluster-wide; the
agent's policy side reads the numbers from the stream's identity records, never from here.

Same labels give the same number, across restarts too: the numbering is written to the state
store (one document) whenever it changed, before a new number reaches a BPF map (`save`, called
by the source once per delta that carries identity changes), and when numbers are freed.
Who holds an identity is not persisted: a restarted agent's source acquires again for every
pod it knows, and numbers nobody claims again age out after the grace period (`gc`).

A missing or unreadable document is rebuilt from the kernel: the endpoint map holds the
identity of every local pod, the store its labels (`recover`), so every pod keeps its number
and no map entry changes.
"""

from __future__ import annotations

import time
from pathlib import Path

from membrane.identities import CLUSTER_IDENTITY_MIN, IdentityAllocator, LabelSet

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
        now = time.time()
        for identity, labels in self.allocator.items().items():
            for owner in self.allocator.owners_of(identity):
                self.allocator.release(labels, owner, now)  # acquired again by the source at start-up

    @staticmethod
    def _fresh() -> IdentityAllocator:
        return IdentityAllocator(CLUSTER_IDENTITY_MIN, grace=GRACE_SECONDS)

    def recover(self, in_use: dict[LabelSet, int]) -> int:
        """Rebuild the numbering from the identities the kernel's maps use (labels -> number);
        returns how many were restored. Persisted at once."""
        restored = sum(1 for labels, number in sorted(in_use.items(), key=lambda kv: kv[1])
                       if self.allocator.claim(number, labels))
        if restored or not self.loaded:
            self.save()
        self.loaded = True
        return restored

    def gc(self) -> list[int]:
        """Numbers no pod held for the grace period are freed (persisted)."""
        freed = self.allocator.gc(time.time())
        if freed:
            self.save()
        return freed

    def save(self) -> None:
        self.db.put_doc(DOC, self.allocator.to_dict())
