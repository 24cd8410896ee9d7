"""The agent's consumer of the state stream, whatever its source: records -> managers -> maps.

Both modes hand this consumer the same thing: versioned `StateUpdate`s (a snapshot, then
deltas) built by the operator's `StateBuilder` — in a cluster from the Kubernetes watch and
streamed over gRPC (agent/cluster_syncing.py), standalone from the local object store
(agent/store_syncing.py). Nothing here knows which.

For every update, in order (the caller is the one driver thread, agent/state_driving.py):

1. a snapshot becomes the difference with the records held (a reconnect rewrites nothing that
   did not change); a delta must follow the version held (else `ResyncNeeded`);
2. each changed record goes, in dependency order (`KIND_ORDER`), to the managers registered
   for its kind: `on_update(kind, key, record)` records desired state, cheaply;
3. every registered manager's `apply()` writes its pending difference to the kernel once for
   the whole update (Felix-style); a manager that cannot (`MapCapacityError`: nothing written)
   makes the update *refused*: recorded, not enforced; the next update retries;
4. the ledger learns the version now enforced (what `apply --wait` and the stream acks read),
   and `on_applied` hooks run (the Kubernetes source persists its cache there).

Plugging in a new kind is one line where the agent is wired: `consumer.register(Kind.X,
manager)`, with `manager.on_update(kind, key, obj)` and `manager.apply()`; a manager that
also has `resync() -> {map: repaired}` is called by the periodic resync. No dispatch code
changes (see docs/internals.md "The state pipeline").
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Network
from typing import Any, Protocol, runtime_checkable

from membrane.api.state_objects import KIND_ORDER, Kind, StateKey, StateObject, StateUpdate
from membrane.k8s_models import ObjectRef

from .datapath.witness import Witness
from .enforcement_ledger import EnforcementLedger
from .map_managing import MapCapacityError

log = logging.getLogger("membrane.state")

Change = tuple[StateKey, StateObject | None]


class ResyncNeeded(RuntimeError):
    """A delta that does not follow what was applied: ask the source for a snapshot."""


class RecordManager(Protocol):
    """What the consumer calls. `on_update` records (no kernel writes); `apply` writes the
    difference since its last call (cheap when nothing is pending; may raise MapCapacityError
    having written nothing)."""

    def on_update(self, kind: Kind, key: str, obj: StateObject | None) -> None: ...

    def apply(self) -> object: ...


@runtime_checkable
class Resyncing(Protocol):
    """A manager that can compare its maps with the kernel and repair drift (periodic)."""

    def resync(self) -> Mapping[str, int]: ...


class StateSource(Protocol):
    """Where the consumer's updates come from: the operator's stream (agent/cluster_syncing.py)
    or the local store (agent/store_syncing.py). The agent talks to it through this only; the
    mode chooses the source and nothing else. Calls that change state run on the driver."""

    damaged: str | None  # its restored state was set aside: the maps are held until a snapshot

    @property
    def pod_cidr(self) -> IPv4Network | None: ...

    def load(self, witness: Witness) -> None:
        """Read its persisted state (checked against the kernel's witness)."""

    def prepare(self) -> None:
        """What of the restore needs neither maps nor endpoints (runs while the datapath compiles)."""

    def restore(self, endpoints: list[tuple[ObjectRef, tuple[str, ...], int]]) -> int:
        """Record the state to enforce at start (no map writes); the local endpoints are given
        as (pod, addresses, identity in the endpoint map)."""

    def restored_enforced(self) -> None:
        """The start-up resync wrote the restored state."""

    def start(self, target: str | None, tls: Any = None) -> None: ...

    def stop(self) -> None: ...

    def before_add(self, namespace: str, pod: str) -> int | None:
        """CNI ADD's gate (CniError to refuse); the pod's starting identity, or None: the
        identity comes with the ADD's own apply."""

    def endpoint_changed(self, ref: ObjectRef, ips: tuple[str, ...] | None) -> None:
        """A local endpoint got (None: lost) its addresses; records, the caller applies."""

    def change_objects(self, docs: list[Any], verb: str) -> tuple[list[dict[str, str]], int]:
        """`membranectl apply`/`delete`: the outcome and the version now enforced."""

    def stored_objects(self, kind: str) -> list[dict[str, Any]]: ...

    def gc(self) -> list[int]:
        """Identity numbers freed (housekeeping)."""

    def object_counts(self) -> dict[str, int]: ...

    def report(self) -> dict[str, Any]:
        """What `membranectl status` shows of the source."""


def ordered(changes: list[Change]) -> list[Change]:
    """Upserts in dependency order (namespaces, nodes, identities, endpoints, policies, ...),
    then deletes in reverse order: an endpoint never refers to an identity not recorded yet."""
    upserts = sorted((c for c in changes if c[1] is not None), key=lambda c: (KIND_ORDER[c[0][0]], c[0][1]))
    deletes = sorted((c for c in changes if c[1] is None), key=lambda c: (-KIND_ORDER[c[0][0]], c[0][1]))
    return upserts + deletes


def snapshot_changes(held: Mapping[StateKey, StateObject], snapshot: list[StateObject]) -> list[Change]:
    """What turns `held` into `snapshot`: only what differs."""
    wanted = {(obj.kind, obj.key): obj for obj in snapshot}
    changes: list[Change] = [(key, obj) for key, obj in wanted.items() if held.get(key) != obj]
    changes += [(key, None) for key in held if key not in wanted]
    return ordered(changes)


class StateConsumer:
    """Records held, version, the per-kind registry of managers, and the ledger."""

    def __init__(self, node_name: str, ledger: EnforcementLedger | None = None,
                 on_refused: Callable[[MapCapacityError], None] = lambda exc: None) -> None:
        self.node_name = node_name
        self.ledger = ledger or EnforcementLedger(node_name)
        self.on_refused = on_refused
        self.lock = threading.RLock()  # this consumer's: guards the records for readers (status)
        self.objects: dict[StateKey, StateObject] = {}
        self.version = 0
        self.stream_id = ""
        self.synced = threading.Event()
        self.on_synced: list[Callable[[], None]] = []
        # (update, changes, records) after every applied update (persistence of a source)
        self.on_applied: list[Callable[[StateUpdate, list[Change], dict[StateKey, StateObject]], None]] = []
        self._by_kind: dict[Kind, list[RecordManager]] = {}
        self._managers: list[RecordManager] = []  # registration order = apply order
        self.counts = {"snapshots": 0, "deltas": 0, "changes": 0, "skipped_objects": 0, "refused": 0}
        self.last_update: float | None = None

    # --- the registry ------------------------------------------------------------------------
    def register(self, kind: Kind, manager: RecordManager) -> None:
        """`manager` gets every record of `kind`; it is applied after every update (once, in
        the order managers were first registered), whatever kinds the update touched."""
        self._by_kind.setdefault(kind, []).append(manager)
        if not any(m is manager for m in self._managers):
            self._managers.append(manager)

    def managers(self) -> list[RecordManager]:
        return list(self._managers)

    def handled_kinds(self) -> list[Kind]:
        return [k for k in Kind if self._by_kind.get(k)]

    # --- updates -----------------------------------------------------------------------------
    def changes_of(self, update: StateUpdate) -> list[Change]:
        """The changes an update makes to the records held (ResyncNeeded: a gap)."""
        if update.snapshot:
            return snapshot_changes(self.objects, [c.obj for c in update.changes if c.obj is not None])
        if update.stream_id != self.stream_id or update.base_version != self.version:
            raise ResyncNeeded(f"delta {update.stream_id}/{update.version} does not follow "
                               f"{self.stream_id or '-'}/{self.version}")
        return [(c.key, c.obj) for c in update.changes]

    def record_update(self, update: StateUpdate) -> list[Change]:
        """Hand the update's changes to the managers (no kernel writes); the version becomes
        the one held. `apply_recorded` writes it."""
        with self.lock:
            changes = self.changes_of(update)
            for key, obj in changes:
                self.record(key, obj)
            if update.stream_id != self.stream_id:
                self.ledger.restart()  # another history: its numbers are unrelated
            self.ledger.record(update.version)
            self.version, self.stream_id = update.version, update.stream_id
            self.counts["snapshots" if update.snapshot else "deltas"] += 1
            self.counts["changes"] += len(changes)
            return changes

    def apply_recorded(self) -> int:
        """Every manager writes its difference; the version held is enforced unless a map
        refused (then nothing of that manager was written, and the refusal is recorded).
        Returns the version enforced."""
        refused: MapCapacityError | None = None
        for manager in self._managers:
            try:
                manager.apply()
            except MapCapacityError as exc:  # nothing of it written; retried with the next update
                refused = refused or exc
        if refused is None:
            self.ledger.enforce(self.version)
        else:
            self.counts["refused"] += 1
            self.ledger.refuse(self.version, str(refused))
            self.on_refused(refused)
        return self.ledger.enforced

    def apply_update(self, update: StateUpdate) -> int:
        """Record, write the maps, run `on_applied`; returns the version to ack (enforced)."""
        started = time.perf_counter()
        changes = self.record_update(update)
        enforced = self.apply_recorded()
        self.last_update = time.time()
        for hook in self.on_applied:
            hook(update, changes, self.objects)
        log.info("state update applied", extra={"fields": {
            "version": update.version, "snapshot": update.snapshot, "changes": len(changes),
            "seconds": round(time.perf_counter() - started, 4)}})
        self.mark_synced()
        return enforced

    def restore(self, objects: list[StateObject], version: int, stream_id: str) -> None:
        """Record a persisted state (no map writes: the agent's start-up resync writes it)."""
        with self.lock:
            for key, obj in snapshot_changes(self.objects, objects):
                self.record(key, obj)
            self.version, self.stream_id = version, stream_id
            if version > 0:
                self.ledger.record(version)  # enforced once the start-up resync wrote it

    def mark_synced(self) -> None:
        """The agent holds a complete state (the first snapshot, or a restored one)."""
        if not self.synced.is_set():
            self.synced.set()
            log.info("state synced: agent ready", extra={"fields": {"version": self.version}})
            for hook in self.on_synced:
                hook()

    def record(self, key: StateKey, obj: StateObject | None) -> None:
        """One record to the managers of its kind; one they refuse is skipped, never fatal."""
        kind, name = key
        if obj is None:
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        for manager in self._by_kind.get(kind, ()):
            try:
                manager.on_update(kind, name, obj)
            except ValueError as exc:  # an object the models refuse
                self.counts["skipped_objects"] += 1
                log.warning("stream object skipped", extra={"fields": {"kind": kind.value, "key": name,
                                                                       "error": str(exc)}})

    # --- reading -----------------------------------------------------------------------------
    def count(self, kind: Kind) -> int:
        with self.lock:
            return sum(1 for k, _ in self.objects if k is kind)

    def get(self, kind: Kind, key: str) -> StateObject | None:
        with self.lock:
            return self.objects.get((kind, key))

    def listing(self, kind: Kind) -> dict[StateKey, StateObject]:
        with self.lock:
            return {key: obj for key, obj in self.objects.items() if key[0] is kind}

    def status(self) -> dict[str, Any]:
        with self.lock:
            kinds: dict[str, int] = {}
            for kind, _ in self.objects:
                kinds[kind.value] = kinds.get(kind.value, 0) + 1
            return {"synced": self.synced.is_set(), "version": self.version, "stream_id": self.stream_id,
                    "objects": kinds, "last_update": self.last_update, **self.counts}
