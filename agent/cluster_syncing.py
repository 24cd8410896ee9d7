"""Kubernetes mode's source: the operator's state stream, over gRPC, into the one consumer.

The `StateClient` calls `apply_update` for every complete update; the consumer
(agent/state_consuming.py) records it through the registered managers, writes the maps once
and returns the version the datapath enforces, which the client acks: the ack means "in the
maps, and established flows judged again" (agent/enforcement_ledger.py). What this source adds:

1. a delta that does not follow what was applied resets the client's resume point, so it
   resubscribes and gets a snapshot;
2. the applied state, its version and stream id are persisted in the state dir (the cluster
   cache), and restored at start before the agent subscribes with its last version (the
   operator then sends only the missing deltas when it still has them);
3. this node's PodCIDR (its own Node record) goes to IPAM; until it is known, CNI ADD is
   answered "try again later", and an ADD waits briefly for the pod's streamed identity.

A change a map cannot hold (MapCapacityError) writes nothing: the old state stays enforced,
the update is still recorded and persisted (it is the cluster's desired state, and the resume
point moves on), but the ack stays at the last enforced version, so the operator shows this
node as not enforcing it. Every later update retries the whole pending difference.

Nothing is ever flushed on a disconnect: the last applied state stays enforced while the
client reconnects with backoff.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from membrane.api.state_objects import Kind, NodeState, StateKey, StateObject, StateUpdate
from membrane.cni_types import TRY_AGAIN_LATER, CniError
from membrane.k8s_models import ObjectRef

from .api_serving import RequestError
from .cluster_persisting import ClusterCache
from .datapath.witness import Witness
from .enforcement_ledger import EnforcementLedger
from .identity_sources import INIT_IDENTITY, StreamIdentities
from .policy_records import NodeCidrs, policy_model  # noqa: F401 - re-exported
from .state_consuming import Change, ResyncNeeded, StateConsumer, ordered, snapshot_changes  # noqa: F401 - re-exported
from .state_db import StateDb
from .state_storing import open_state

log = logging.getLogger("membrane.cluster")


class ClusterSyncer:
    """The operator's stream into `consumer`; persists what was applied; gates CNI ADD.

    `on_pod_cidr` hands this node's PodCIDR to IPAM (its own Node record, registered with the
    consumer here); the consumer's `on_synced` hooks run once the agent holds a complete state
    (the first snapshot, or a restored one).
    """

    def __init__(self, node_name: str, consumer: StateConsumer, identities: StreamIdentities,
                 state_dir: Path, on_pod_cidr: Callable[[IPv4Network], None] = lambda cidr: None,
                 identity_wait: float = 2.0, db: StateDb | None = None) -> None:
        self.node_name = node_name
        self.consumer = consumer
        self.identities = identities
        self.cache = ClusterCache(db if db is not None else open_state(state_dir).db)
        self.identity_wait = identity_wait
        self.cidrs = NodeCidrs(node_name, on_pod_cidr)
        consumer.register(Kind.NODE, self.cidrs)
        consumer.on_applied.append(self._persist)
        self.client: Any = None  # the StateClient once started
        # How an update reaches the consumer: the agent runs it on its one driver thread.
        self.run: Callable[[Callable[[], int]], int] = lambda fn: fn()
        self.damaged: str | None = None  # the cache was set aside at restore: wait for a snapshot

    # --- the consumer's view -------------------------------------------------------------
    @property
    def objects(self) -> dict[StateKey, StateObject]:
        return self.consumer.objects

    @property
    def version(self) -> int:
        return self.consumer.version

    @property
    def stream_id(self) -> str:
        return self.consumer.stream_id

    @property
    def synced(self) -> threading.Event:
        return self.consumer.synced

    @property
    def ledger(self) -> EnforcementLedger:
        return self.consumer.ledger

    @property
    def pod_cidr(self) -> IPv4Network | None:
        return self.cidrs.pod_cidr

    @property
    def counts(self) -> dict[str, int]:
        return self.consumer.counts

    # --- restore and persistence ---------------------------------------------------------
    def load(self, witness: Witness) -> None:
        """The cache is read at `restore`, checked against the kernel's witness."""
        self.cache.witness = witness

    def prepare(self) -> None:
        """Nothing ahead of the restore: the cache is read there (a damaged one holds the maps)."""

    def restore(self, endpoints: Iterable[tuple[ObjectRef, tuple[str, ...], int]] = ()) -> int:
        """Record the persisted state (no map writes: the agent's start-up resync does them).
        Local endpoints need nothing here: the stream carries their pods."""
        saved = self.cache.load()
        if saved.damaged is not None:
            self.damaged = saved.damaged
            log.warning("cluster cache damaged and set aside: the maps keep the last applied state until the "
                        "operator's snapshot", extra={"fields": {"reason": saved.damaged}})
            return 0
        if not saved.objects and not saved.version:
            return 0
        self.consumer.restore(list(saved.objects.values()), saved.version, saved.stream_id)
        if saved.version > 0:
            self.consumer.synced.set()  # the state it enforced before the restart, complete as of version
        log.info("cluster state restored", extra={"fields": {"version": self.version, "stream_id": self.stream_id,
                                                             "objects": len(self.objects)}})
        return len(saved.objects)

    def restored_enforced(self) -> None:
        """The start-up resync wrote the restored state: its version is enforced."""
        if self.version > 0:
            self.consumer.ledger.enforce(self.version)

    def _persist(self, update: StateUpdate, changes: list[Change], objects: dict[StateKey, StateObject]) -> None:
        if update.snapshot:  # every row rewritten: the cache cannot drift from what is held
            self.cache.write_snapshot(update.version, update.stream_id, objects)
        else:  # its rows and its version in one transaction (a batch of versions too)
            self.cache.write_delta(update.version, update.stream_id, changes)

    # --- the stream ------------------------------------------------------------------------
    def apply_update(self, update: StateUpdate) -> int:
        """Record, write the maps, persist; returns the version to ack (the one enforced)."""
        try:
            return self.consumer.apply_update(update)
        except ResyncNeeded:
            self._ask_for_snapshot()
            raise

    def _ask_for_snapshot(self) -> None:
        if self.client is not None:  # the client resubscribes with these after the failure
            self.client.last_version, self.client.stream_id = 0, ""

    # --- what the agent hands a source ---------------------------------------------------
    def endpoint_changed(self, ref: ObjectRef, ips: tuple[str, ...] | None) -> None:
        """Nothing: in a cluster the kubelet reports a pod's addresses to the API server."""

    def change_objects(self, docs: list[Any], verb: str) -> tuple[list[dict[str, str]], int]:
        raise RequestError("this agent runs in kubernetes mode: apply objects to the Kubernetes API", code=409)

    def stored_objects(self, kind: str) -> list[dict[str, Any]]:
        return []  # no local store: the objects live in the Kubernetes API

    def gc(self) -> list[int]:
        return []  # the operator garbage-collects identities cluster-wide

    def object_counts(self) -> dict[str, int]:
        return {"Namespace": self.consumer.count(Kind.NAMESPACE), "Pod": self.consumer.count(Kind.ENDPOINT),
                "NetworkPolicy": self.consumer.count(Kind.POLICY)}

    def report(self) -> dict[str, Any]:
        return {"cluster": self.status()}

    # --- the CNI side ---------------------------------------------------------------------
    def before_add(self, namespace: str, pod: str) -> int | None:
        """Gate for CNI ADD: no PodCIDR yet -> try again later; then wait briefly for the pod's
        identity, else start it with INIT (updated in place when the identity arrives)."""
        if self.pod_cidr is None:
            raise CniError(TRY_AGAIN_LATER, "this node's PodCIDR is not known yet (waiting for membrane-operator)",
                           f"node {self.node_name}")
        if not pod:
            return INIT_IDENTITY
        ref = ObjectRef(namespace or "default", pod)
        identity = self.identities.wait_for_pod(ref, self.identity_wait)
        if identity is None:
            log.info("pod identity not streamed yet: starting with INIT", extra={"fields": {
                "pod": str(ref), "waited_seconds": self.identity_wait}})
            return INIT_IDENTITY
        return identity

    # --- the client ---------------------------------------------------------------------
    def start(self, target: str | None, tls: Any = None) -> None:
        """Subscribe to the operator at `target` (grpc target: host:port or unix:///path)."""
        if target is None:
            raise ValueError("kubernetes mode needs the operator's address")
        # The agent forks (netns helpers) while the stream is open; its children never use gRPC,
        # so gRPC's fork handlers are off (they would only log that they skip).
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        from membrane.api.backoff import Backoff
        from membrane.api.state_client import StateClient

        self.client = StateClient(grpc_target(target), self.node_name,
                                  lambda update: self.run(lambda: self.apply_update(update)),
                                  last_version=self.version, stream_id=self.stream_id,
                                  backoff=Backoff(initial=0.2, maximum=5.0), tls=tls)
        self.client.start()

    def stop(self) -> None:
        if self.client is not None:
            self.client.stop()

    def status(self) -> dict[str, Any]:
        """For `membranectl status`: where the stream stands (`subscribed` is the client's view:
        a subscription was started and has not failed yet)."""
        client = self.client
        return {**self.consumer.status(),
                "subscribed": bool(client is not None and client.connected.is_set()),
                "subscriptions": client.connects if client is not None else 0,
                "pod_cidr": str(self.pod_cidr) if self.pod_cidr else None, "cache_damaged": self.damaged}


def saved_pod_cidr(db: StateDb, node_name: str) -> IPv4Network | None:
    """This node's PodCIDR as last persisted (read before IPAM restores its pool)."""
    node = ClusterCache(db).load(set_aside_damage=False).objects.get((Kind.NODE, node_name))
    if isinstance(node, NodeState) and node.pod_cidr:
        try:
            return IPv4Network(node.pod_cidr)
        except ValueError:
            return None
    return None


def grpc_target(address: str) -> str:
    """`unix:///abs/path`, `unix:/abs/path` and `host:port` pass through; `unix://rel` is made
    absolute-safe (gRPC reads `unix://x` as authority `x`)."""
    if address.startswith("unix://") and not address.startswith("unix:///"):
        return "unix:" + str(Path(address[len("unix://"):]).resolve())
    return address
