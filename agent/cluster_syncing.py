"""Kubernetes mode: the operator's state stream -> the same policy manager standalone mode feeds.

`ClusterSyncer.apply_update` is what the `StateClient` calls for every complete update:

1. a snapshot is turned into the difference with what this agent holds (so a reconnect to a
   restarted operator rewrites nothing that did not change), a delta is taken as is;
2. each change is recorded as the record it is (namespace labels, endpoint records with their
   identities, policies; no Pod object is rebuilt from a record): remote pods
   become ipcache entries, only local endpoints get policy map entries; this node's PodCIDR
   goes to IPAM);
3. the policy manager writes the map difference once for the whole update;
4. the applied state, its version and stream id are persisted in the state dir;
5. it returns the version the datapath now enforces, and the client acks it: the ack means
   "in the maps, and established flows judged again" (agent/enforcement_ledger.py).

A change a map cannot hold (MapCapacityError) writes nothing: the old state stays enforced,
the update is still recorded and persisted (it is the cluster's desired state, and the resume
point moves on), but the ack stays at the last enforced version, so the operator shows this
node as not enforcing it. Every later update retries the whole pending difference.

Nothing is ever flushed on a disconnect: the last applied state stays enforced while the
client reconnects with backoff, and a restarted agent restores the persisted state before it
subscribes with its last version (the operator then sends only the missing deltas when it
still has them).

A local pod's endpoint may be deleted from the stream before its sandbox is gone (the operator
stops streaming a pod once it is terminating): the agent keeps enforcing its last identity and
labels until the endpoint itself goes (CNI DEL), so a terminating pod is never demoted to INIT.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from membrane.api.state_objects import (
    KIND_ORDER,
    EndpointState,
    IdentityState,
    Kind,
    NamespaceState,
    NodeState,
    PolicyState,
    StateKey,
    StateObject,
    StateUpdate,
)
from membrane.cni_types import TRY_AGAIN_LATER, CniError
from membrane.k8s_models import NetworkPolicy, ObjectRef, parse_object

from .cluster_persisting import StateFile, object_from_json, object_to_json  # noqa: F401 - re-exported
from .enforcement_ledger import EnforcementLedger
from .identity_sources import INIT_IDENTITY, StreamIdentities
from .pod_records import endpoint_record
from .policy_syncing import MapCapacityError, PolicyManager

log = logging.getLogger("membrane.cluster")

Change = tuple[StateKey, StateObject | None]


class ResyncNeeded(RuntimeError):
    """A delta that does not follow what was applied: ask the operator for a snapshot."""


# --- stream records -> what the policy manager records --------------------------------------
def policy_model(state: PolicyState) -> NetworkPolicy:
    obj = parse_object(json.loads(state.object_json))
    if not isinstance(obj, NetworkPolicy):
        raise ValueError(f"policy {state.key} is a {type(obj).__name__}")
    return obj


def ordered(changes: list[Change]) -> list[Change]:
    """Upserts in dependency order (namespaces, nodes, identities, endpoints, policies), then
    deletes in reverse order: an endpoint never refers to an identity not recorded yet."""
    upserts = sorted((c for c in changes if c[1] is not None), key=lambda c: (KIND_ORDER[c[0][0]], c[0][1]))
    deletes = sorted((c for c in changes if c[1] is None), key=lambda c: (-KIND_ORDER[c[0][0]], c[0][1]))
    return upserts + deletes


def snapshot_changes(held: dict[StateKey, StateObject], snapshot: list[StateObject]) -> list[Change]:
    """What turns `held` into `snapshot`: only what differs."""
    wanted = {(obj.kind, obj.key): obj for obj in snapshot}
    changes: list[Change] = [(key, obj) for key, obj in wanted.items() if held.get(key) != obj]
    changes += [(key, None) for key in held if key not in wanted]
    return ordered(changes)


class ClusterSyncer:
    """Applies stream updates to the policy manager and IPAM; persists what it applied.

    `apply_maps` writes the policy manager's pending difference to the maps (the agent's
    `_apply_policy`); `on_pod_cidr` hands this node's PodCIDR to IPAM; `on_synced` runs once,
    when the agent holds a complete state (the first snapshot, or a restored one).
    """

    def __init__(self, node_name: str, policy: PolicyManager, identities: StreamIdentities,
                 state_dir: Path, apply_maps: Callable[[], object],
                 on_pod_cidr: Callable[[IPv4Network], None] = lambda cidr: None,
                 on_synced: Callable[[], None] = lambda: None, identity_wait: float = 2.0,
                 ledger: EnforcementLedger | None = None,
                 on_refused: Callable[[MapCapacityError], None] = lambda exc: None) -> None:
        self.node_name = node_name
        self.policy = policy
        self.identities = identities
        self.file = StateFile(state_dir)
        self.apply_maps = apply_maps
        self.on_pod_cidr = on_pod_cidr
        self.on_synced = on_synced
        self.identity_wait = identity_wait
        self.ledger = ledger or EnforcementLedger(node_name)
        self.on_refused = on_refused
        self.lock = threading.RLock()
        self.objects: dict[StateKey, StateObject] = {}
        self.version = 0
        self.stream_id = ""
        self.pod_cidr: IPv4Network | None = None
        self.synced = threading.Event()
        self.lingering: set[ObjectRef] = set()  # deleted from the stream, still wired here
        self.counts = {"snapshots": 0, "deltas": 0, "changes": 0, "skipped_objects": 0, "refused": 0}
        self.last_update: float | None = None
        self.client: Any = None  # the StateClient once started
        self.damaged: str | None = None  # the cache was set aside at restore: wait for a snapshot

    # --- restore and persistence ---------------------------------------------------------
    def restore(self) -> int:
        """Record the persisted state (no map writes: the agent's start-up resync does them)."""
        saved = self.file.load()
        if saved.damaged is not None:
            self.damaged = saved.damaged
            log.warning("cluster cache damaged and set aside: the maps keep the last applied state until the "
                        "operator's snapshot", extra={"fields": {"reason": saved.damaged}})
            return 0
        if not saved.objects and not saved.version:
            return 0
        objects = list(saved.objects.values())
        with self.lock, self.policy.recording():
            for key, obj in snapshot_changes({}, objects):
                self._record(key, obj)
            self.version, self.stream_id = saved.version, saved.stream_id
        if self.version > 0:
            self.synced.set()  # the state it enforced before the restart, complete as of version
            self.ledger.record(self.version)  # enforced once the start-up resync wrote it
        log.info("cluster state restored", extra={"fields": {"version": self.version, "stream_id": self.stream_id,
                                                             "objects": len(self.objects)}})
        return len(objects)

    # --- the stream ------------------------------------------------------------------------
    def restored_enforced(self) -> None:
        """The start-up resync wrote the restored state: its version is enforced."""
        if self.version > 0:
            self.ledger.enforce(self.version)

    def apply_update(self, update: StateUpdate) -> int:
        """Record, write the maps, persist; returns the version to ack (the one enforced)."""
        started = time.perf_counter()
        with self.lock, self.policy.recording():
            if update.snapshot:
                changes = snapshot_changes(self.objects, [c.obj for c in update.changes if c.obj is not None])
            else:
                if update.stream_id != self.stream_id or update.base_version != self.version:
                    self._ask_for_snapshot()
                    raise ResyncNeeded(f"delta {update.stream_id}/{update.version} does not follow "
                                       f"{self.stream_id or '-'}/{self.version}")
                changes = [(c.key, c.obj) for c in update.changes]
            for key, obj in changes:
                self._record(key, obj)
            if update.stream_id != self.stream_id:
                self.ledger.restart()  # another operator history: its numbers are unrelated
            self.ledger.record(update.version)
            try:
                self.apply_maps()
                self.ledger.enforce(update.version)
            except MapCapacityError as exc:  # nothing written; retried with the next update
                self.counts["refused"] += 1
                self.ledger.refuse(update.version, str(exc))
                self.on_refused(exc)
            self.counts["snapshots" if update.snapshot else "deltas"] += 1
            self.counts["changes"] += len(changes)
            self.last_update = time.time()
            if update.snapshot or update.base_version != update.version - 1:
                # the journal holds single versions; a batch (this agent lagged) compacts
                self.file.write_base(update.version, update.stream_id, self.objects)
            else:
                self.file.append(update.version, update.stream_id, changes, self.objects)
            self.version, self.stream_id = update.version, update.stream_id
        log.info("cluster update applied", extra={"fields": {
            "version": update.version, "snapshot": update.snapshot, "changes": len(changes),
            "seconds": round(time.perf_counter() - started, 4)}})
        if not self.synced.is_set():
            self.synced.set()
            log.info("cluster state synced: agent ready", extra={"fields": {"version": update.version}})
            self.on_synced()
        return self.ledger.enforced

    def _ask_for_snapshot(self) -> None:
        if self.client is not None:  # the client resubscribes with these after the failure
            self.client.last_version, self.client.stream_id = 0, ""

    def _record(self, key: StateKey, obj: StateObject | None) -> None:
        kind, name = key
        if obj is None:
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        try:
            if kind is Kind.NAMESPACE:
                self.policy.on_namespace(name, dict(obj.labels) if isinstance(obj, NamespaceState) else None)
            elif kind is Kind.NODE:
                self._node(name, obj if isinstance(obj, NodeState) else None)
            elif kind is Kind.IDENTITY:
                if isinstance(obj, IdentityState):
                    self.identities.set_identity(obj.id, obj.labels)
                else:
                    self.identities.forget_identity(int(name))
            elif kind is Kind.ENDPOINT:
                self._endpoint(ObjectRef.parse(name), obj if isinstance(obj, EndpointState) else None)
            elif kind is Kind.POLICY:
                ref = ObjectRef.parse(name)
                self.policy.on_policy(ref, policy_model(obj) if isinstance(obj, PolicyState) else None)
        except ValueError as exc:  # an object the models refuse: skipped, never fatal for the stream
            self.counts["skipped_objects"] += 1
            log.warning("stream object skipped", extra={"fields": {"kind": kind.value, "key": name, "error": str(exc)}})

    def _endpoint(self, ref: ObjectRef, obj: EndpointState | None) -> None:
        if obj is None:
            if ref in self.policy.local and ref not in self.lingering:
                # Terminating but still wired here: keep its last identity and labels until CNI DEL.
                self.lingering.add(ref)
                return
            self.lingering.discard(ref)
            self.identities.forget_pod(ref)
            self.policy.on_pod(ref, None)
            return
        self.lingering.discard(ref)
        self.identities.set_pod(ref, obj.identity)
        self.policy.on_pod(ref, endpoint_record(obj))

    def endpoint_removed(self, ref: ObjectRef) -> None:
        """The local endpoint is gone (CNI DEL): forget a pod the stream already deleted."""
        with self.lock, self.policy.recording():
            if ref in self.lingering:
                self.lingering.discard(ref)
                self.identities.forget_pod(ref)
                self.policy.on_pod(ref, None)

    def _node(self, name: str, obj: NodeState | None) -> None:
        if name != self.node_name:  # another node: its IP is the tunnel endpoint of its pods
            self.policy.on_node(name, obj.addresses if obj is not None else (),
                                obj.pod_cidr if obj is not None else None)
            return
        if obj is None or not obj.pod_cidr:
            return
        try:
            cidr = IPv4Network(obj.pod_cidr)
        except ValueError:
            log.warning("node PodCIDR is not IPv4", extra={"fields": {"pod_cidr": obj.pod_cidr}})
            return
        if cidr != self.pod_cidr:
            if self.pod_cidr is not None:
                log.warning("node PodCIDR changed", extra={"fields": {"old": str(self.pod_cidr), "new": str(cidr)}})
            self.pod_cidr = cidr
            self.on_pod_cidr(cidr)

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
    def start(self, target: str, tls: Any = None) -> None:
        """Subscribe to the operator at `target` (grpc target: host:port or unix:///path)."""
        # The agent forks (netns helpers) while the stream is open; its children never use gRPC,
        # so gRPC's fork handlers are off (they would only log that they skip).
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
        from membrane.api.backoff import Backoff
        from membrane.api.state_client import StateClient

        self.client = StateClient(grpc_target(target), self.node_name, self.apply_update,
                                  last_version=self.version, stream_id=self.stream_id,
                                  backoff=Backoff(initial=0.2, maximum=5.0), tls=tls)
        self.client.start()

    def stop(self) -> None:
        if self.client is not None:
            self.client.stop()

    def status(self) -> dict[str, Any]:
        """For `membranectl status`: where the stream stands (`subscribed` is the client's view:
        a subscription was started and has not failed yet)."""
        with self.lock:
            kinds: dict[str, int] = {}
            for kind, _ in self.objects:
                kinds[kind.value] = kinds.get(kind.value, 0) + 1
            client = self.client
            return {"synced": self.synced.is_set(), "version": self.version, "stream_id": self.stream_id,
                    "subscribed": bool(client is not None and client.connected.is_set()),
                    "subscriptions": client.connects if client is not None else 0,
                    "pod_cidr": str(self.pod_cidr) if self.pod_cidr else None, "objects": kinds,
                    "lingering_endpoints": len(self.lingering), "last_update": self.last_update,
                    "cache_damaged": self.damaged, **self.counts}

    def count(self, kind: Kind) -> int:
        with self.lock:
            return sum(1 for k, _ in self.objects if k is kind)


def saved_pod_cidr(state_dir: Path, node_name: str) -> IPv4Network | None:
    """This node's PodCIDR as last persisted (read before IPAM restores its pool)."""
    node = StateFile(state_dir).load(set_aside_damage=False).objects.get((Kind.NODE, node_name))
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
