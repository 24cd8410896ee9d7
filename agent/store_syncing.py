"""Standalone mode's source: the local object store, through `LocalSource`, into the one consumer.

`membranectl apply`/`delete` store objects (agent/object_store.py); the store's listener is
`LocalSource.on_object`, which feeds the operator's own `StateBuilder`; `commit` numbers the
identities the pods need with the node's one allocator (persisted by `IdentityBook`) and
appends one delta to the local `StateLog`. That delta goes to the same consumer (agent/
state_consuming.py) the operator's stream goes to in a cluster, on the agent's one driver thread.

What this source does that the cluster does elsewhere:

- CNI: a local endpoint's addresses are what the kubelet would report in a cluster
  (`endpoint_changed`, recorded before the ADD's apply, so the ADD is answered with the
  pod's identity at once);
- versions: the local stream's version is the one `apply --wait` reports and the ledger
  enforces; a store batch that changes no record keeps the version (already enforced);
- a batch a map cannot hold (MapCapacityError) is refused: the store is rolled back and the
  rollback's delta applied (it writes nothing the maps do not already hold), error 507;
- the identity numbering is saved before a number reaches a map; unused numbers age out in
  `gc` (housekeeping).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from ipaddress import IPv4Network
from typing import Any

from membrane.api.state_objects import Change, Kind, StateUpdate
from membrane.identities import CLUSTER_IDENTITY_MIN, LabelSet, identity_labels
from membrane.k8s_models import ObjectRef

from .api_serving import RequestError
from .datapath.witness import Witness
from .identity_book import IdentityBook
from .local_source import STREAMED_KINDS, LocalSource
from .object_store import ObjectStore
from .policy_records import NodeCidrs
from .state_consuming import StateConsumer

log = logging.getLogger("membrane.store")

REFUSED = 507  # API error code: a map would overflow, the change was rolled back


class StoreSyncer:
    """The local store into `consumer`; `on_pod_cidr` hands IPAM this node's PodCIDR (the
    configured one, or a Node object's for this node)."""

    def __init__(self, node_name: str, consumer: StateConsumer, store: ObjectStore, book: IdentityBook,
                 pod_cidr: IPv4Network, on_pod_cidr: Callable[[IPv4Network], None],
                 accept_state_loss: bool = False, loaded: dict[str, Any] | None = None) -> None:
        """loaded: the store's load report when it was read (and checked against the witness)
        before the datapath compile (agent/starting_ahead.py); `load` then reads nothing."""
        self.node_name = node_name
        self.loaded = loaded
        self._prepared = False
        self.consumer = consumer
        self.store = store
        self.book = book
        self.accept_state_loss = accept_state_loss
        self.source = LocalSource(node_name, book.allocator)
        store.listeners.append(self.source.on_object)
        self.cidrs = NodeCidrs(node_name, on_pod_cidr, pod_cidr)
        consumer.register(Kind.NODE, self.cidrs)
        self.damaged: str | None = None  # the store refuses to load instead: never set here

    @property
    def pod_cidr(self) -> IPv4Network | None:
        return self.cidrs.pod_cidr

    # --- start-up ----------------------------------------------------------------------------
    def load(self, witness: Witness) -> None:
        if self.loaded is None:
            self.loaded = self.store.load(witness, self.accept_state_loss)
            log.info("object store loaded", extra={"fields": self.loaded})

    def prepare(self) -> None:
        """The stored objects into the state logic (no identity numbered, no map read: it may
        run while the datapath compiles); `restore` adds the endpoints and takes the snapshot."""
        if self._prepared:
            return
        self._prepared = True
        for kind in STREAMED_KINDS:
            for obj in self.store.list(kind):
                meta = obj.metadata  # type: ignore[attr-defined]  # store objects are the k8s models, all with metadata
                self.source.on_object(kind, (kind, meta.namespace or "", meta.name), obj)

    def restore(self, endpoints: Iterable[tuple[ObjectRef, tuple[str, ...], int]] = ()) -> int:
        """Record the stored objects and the restored endpoints (ref, addresses, identity in
        the endpoint map) as the first snapshot; no map writes (the start-up resync does them)."""
        endpoints = list(endpoints)
        # Also when the numbering was read: a state store that lost its last commits may lack
        # numbers the endpoint map already uses.
        loaded = self.book.loaded
        reclaimed = self.book.recover(self._identities_in_use(endpoints))
        if reclaimed or not loaded:
            log.info("identities rebuilt from the endpoint map", extra={"fields": {
                "restored": reclaimed, "damaged": self.book.damaged}})
        self.prepare()  # numbering happens at the commit below, after the recovery
        for ref, ips, _ in endpoints:
            self.source.on_endpoint(ref.namespace, ref.name, ips)
        self._commit()
        version, objects = self.source.log.snapshot()
        self.consumer.record_update(StateUpdate(version, self.source.log.stream_id, True,
                                                [Change((o.kind, o.key), o) for o in objects]))
        self.consumer.synced.set()  # the whole stored state: complete
        self.cidrs.announce()  # the configured PodCIDR: IPAM has it, masquerade for it
        return len(objects)

    def restored_enforced(self) -> None:
        """The start-up resync wrote the restored state: its version is enforced."""
        self.consumer.ledger.enforce(self.consumer.version)

    def _identities_in_use(self, endpoints: list[tuple[ObjectRef, tuple[str, ...], int]]) -> dict[LabelSet, int]:
        """labels -> identity of every local pod, as the endpoint map holds it."""
        found: dict[LabelSet, int] = {}
        for ref, _, identity in endpoints:
            if identity < CLUSTER_IDENTITY_MIN:
                continue
            pod = self.store.get("Pod", ref.namespace, ref.name)
            ns = self.store.get("Namespace", "", ref.namespace)
            pod_labels = dict(pod.metadata.labels) if pod is not None else {}  # type: ignore[attr-defined]  # store objects are the k8s models, all with metadata
            ns_labels = dict(ns.metadata.labels) if ns is not None else {}  # type: ignore[attr-defined]  # store objects are the k8s models, all with metadata
            found.setdefault(identity_labels(pod_labels, ref.namespace, ns_labels), identity)
        return found

    # --- on the driver ---------------------------------------------------------------------------
    def _commit(self) -> StateUpdate | None:
        """The local stream's next delta (None: no record changed); the numbering is saved
        first when it changed (before any number reaches a map)."""
        delta = self.source.commit()
        if delta is None:
            return None
        if any(c.key[0] is Kind.IDENTITY for c in delta.changes):
            self.book.save()
        return StateUpdate(delta.version, self.source.log.stream_id, False, list(delta.changes),
                           base_version=delta.version - 1)

    def endpoint_changed(self, ref: ObjectRef, ips: tuple[str, ...] | None) -> None:
        """A local endpoint got (or lost: None) its addresses: recorded, applied by the caller."""
        self.source.on_endpoint(ref.namespace, ref.name, ips)
        update = self._commit()
        if update is not None:
            self.consumer.record_update(update)

    def change_objects(self, docs: list[Any], verb: str) -> tuple[list[dict[str, str]], int]:
        """`apply`/`delete`: store, write the maps; returns the outcome and the version now
        enforced. A change a map cannot hold is rolled back and refused (RequestError 507)."""
        saved = self.store.saved(docs)
        outcome = self.store.apply(docs) if verb == "apply" else self.store.delete(docs)
        update = self._commit()
        if update is None:  # no record changed: what is enforced already holds it
            return outcome, self.consumer.version
        enforced = self.consumer.apply_update(update)
        if enforced >= update.version:
            return outcome, enforced
        reason = self.consumer.ledger.reason(update.version) or "a map would overflow"
        self.store.restore(saved)  # the listener records the old objects again
        rollback = self._commit()
        if rollback is not None:
            self.consumer.apply_update(rollback)  # writes only what differs from the maps: nothing
        raise RequestError(f"{verb} refused: {reason}", code=REFUSED)

    def gc(self) -> list[int]:
        """Identity numbers no pod held for the grace period are freed (and their records go)."""
        freed = self.book.gc()
        if freed:
            self.source.sync_identities()
            update = self._commit()
            if update is not None:
                self.consumer.apply_update(update)
        return freed

    # --- reading -----------------------------------------------------------------------------
    def object_counts(self) -> dict[str, int]:
        return {k: self.store.count(k) for k in ("Namespace", "Pod", "NetworkPolicy")}

    def stored_objects(self, kind: str) -> list[dict[str, Any]]:
        return [o.model_dump(mode="json", by_alias=True, exclude_none=True) for o in self.store.list(kind)]

    def report(self) -> dict[str, Any]:
        return {}  # `store` (object counts) and `enforcement` say it all

    def before_add(self, namespace: str, pod: str) -> int | None:
        """Nothing to wait for: the ADD's own apply numbers the pod (`endpoint_changed`)."""
        return None

    def start(self, target: str | None, tls: Any = None) -> None:
        """Nothing to subscribe to: the store feeds the consumer as it changes."""

    def stop(self) -> None:
        """Nothing to stop."""
