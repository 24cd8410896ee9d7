"""Cluster-wide identity allocation (leader only): pods' security labels -> MembraneIdentity.

The API holds the truth: one MembraneIdentity per number. A new leader rebuilds the allocator
from the identities it finds (so numbers never change across failovers), then each pass:

- acquires the identity of every pod that needs one (owner = namespace/name) and creates the
  MembraneIdentity object of a new number;
- releases the identities of pods that went away or changed labels; an identity nobody uses
  is deleted once the grace period has passed (a pod re-created meanwhile gets its number
  back, and other nodes' conntrack entries never see a number change owner quickly);
- recreates an identity object that is in use but vanished from the API.

Grace periods restart on failover (the timers live in the leader's memory): conservative,
an unused identity lives at most one extra grace period.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from membrane.identities import (
    CLUSTER_IDENTITY_MAX,
    CLUSTER_IDENTITY_MIN,
    IdentitiesExhausted,
    IdentityAllocator,
    LabelSet,
)
from membrane.operator.identity_objects import (  # noqa: F401 - re-exported
    MANAGED_BY,
    NAMESPACE_LABEL,
    identity_object,
    mirrored_labels,
    parse_identity,
)
from membrane.operator.kube_client import KubeClient, KubeError
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.pod_facts import needs_identity, pod_identity_labels, pod_key
from membrane.operator.resources import IDENTITIES

log = logging.getLogger(__name__)

JSON = dict[str, Any]
# A create we made is trusted this long before the watch must show it; then we check again.
CREATE_SETTLE = 10.0


class IdentitySyncer:
    def __init__(self, kube: KubeClient, metrics: OperatorMetrics, grace: float = 300.0) -> None:
        self.kube = kube
        self.metrics = metrics
        self.grace = grace
        self.allocator: IdentityAllocator | None = None
        self._owned: dict[str, LabelSet] = {}  # pod key -> labels it holds
        self._created: dict[int, float] = {}  # number -> when we created its object

    def reset(self) -> None:
        """Forget everything (leadership lost): the next leader pass reloads from the API."""
        self.allocator = None
        self._owned.clear()
        self._created.clear()

    def _load(self, known: dict[int, LabelSet], now: float) -> IdentityAllocator:
        used = set(known)
        top = max(used, default=CLUSTER_IDENTITY_MIN - 1)
        data = {
            "version": 1, "first": CLUSTER_IDENTITY_MIN, "last": CLUSTER_IDENTITY_MAX,
            "grace": self.grace, "next": top + 1,
            # Holes below the highest number are reused only after fresh numbers run out.
            "free": [i for i in range(CLUSTER_IDENTITY_MIN, min(top, CLUSTER_IDENTITY_MIN + 65536) + 1)
                     if i not in used],
            "identities": [{"id": i, "labels": labels.to_strings(), "owners": [],
                            "releasedAt": now} for i, labels in sorted(known.items())],
        }
        log.info("identities: loaded %d from the API", len(known))
        return IdentityAllocator.from_dict(data)

    def sync(self, pods: list[JSON], namespaces: dict[str, JSON], objects: list[JSON],
             now: float | None = None) -> None:
        wanted: dict[str, LabelSet] = {}
        for pod in pods:
            if needs_identity(pod):
                labels = pod_identity_labels(pod, namespaces)
                if labels is not None:
                    wanted[pod_key(pod)] = labels
        existing = {p[0]: p[1] for p in (parse_identity(o) for o in objects) if p is not None}
        self.sync_wanted(wanted, existing, now)

    def sync_wanted(self, wanted: dict[str, LabelSet], existing: dict[int, LabelSet],
                    now: float | None = None) -> None:
        """`sync` with the work done elsewhere: `wanted` is pod key -> identity labels of every
        pod that needs one, `existing` the parsed MembraneIdentity objects (number -> labels)."""
        now = time.monotonic() if now is None else now
        if self.allocator is None:
            self.allocator = self._load(existing, now)
        allocator = self.allocator
        for owner, labels in list(self._owned.items()):
            now_wanted = wanted.get(owner)
            if now_wanted is labels:
                continue
            if now_wanted == labels:
                self._owned[owner] = now_wanted  # the same labels: `is` is enough next pass
                continue
            allocator.release(labels, owner, now)
            del self._owned[owner]
        for owner, labels in wanted.items():
            if owner not in self._owned:
                try:
                    allocator.acquire(labels, owner)
                except IdentitiesExhausted as exc:
                    log.error("identities: %s", exc)
                    continue
                self._owned[owner] = labels
        for identity, labels in allocator.items().items():
            if identity in existing or not allocator.owners_of(identity):
                continue
            if identity in existing or now - self._created.get(identity, -CREATE_SETTLE) < CREATE_SETTLE:
                continue
            self._create(identity, labels, now)
        for identity in allocator.gc(now):
            self._delete(identity)
        self.metrics.identities.set(len(existing))

    def relabel(self, objects: list[JSON]) -> int:
        """Leader: give identity objects the labels `mirrored_labels` says they should carry
        (objects made before the labels were mirrored, or edited by hand); returns how many
        were patched. Only labels are touched: securityLabels are immutable."""
        patched = 0
        for obj in objects:
            parsed = parse_identity(obj)
            if parsed is None:
                continue
            identity, labels = parsed
            want = mirrored_labels(labels)
            have = (obj.get("metadata") or {}).get("labels") or {}
            if all(have.get(k) == v for k, v in want.items()):
                continue
            try:
                self.kube.merge_patch(IDENTITIES, str(identity), {"metadata": {"labels": want}})
                patched += 1
            except KubeError as exc:
                if not exc.not_found:
                    log.warning("identity %d not relabelled (%s), will retry", identity, exc.status)
                    self.metrics.api_write_errors.labels("identity_labels").inc()
        return patched

    def _create(self, identity: int, labels: LabelSet, now: float) -> None:
        try:
            self.kube.create(IDENTITIES, identity_object(identity, labels))
        except KubeError as exc:
            if not exc.conflict:
                log.warning("identity %d not created (%s), will retry", identity, exc.status)
                self.metrics.api_write_errors.labels("identity").inc()
                return
            current = parse_identity(self.kube.get(IDENTITIES, str(identity)))
            if current is None or current[1] != labels:
                # Someone else (a split-brain leader) wrote this number for other labels; ours
                # must not alias it. Drop our state and reload from the API next pass.
                log.error("identity %d exists with other labels; reloading", identity)
                self.reset()
                return
        self._created[identity] = now
        self.metrics.identity_allocations.inc()
        log.info("identity %d allocated for %s", identity, labels)

    def _delete(self, identity: int) -> None:
        self._created.pop(identity, None)
        try:
            self.kube.delete(IDENTITIES, str(identity))
        except KubeError as exc:
            if not exc.not_found:
                log.warning("identity %d not deleted (%s)", identity, exc.status)
                self.metrics.api_write_errors.labels("identity_gc").inc()
                return
        self.metrics.identity_gc.inc()
        log.info("identity %d garbage-collected", identity)
