"""Leader election on a `coordination.k8s.io/v1` Lease (client-go's leaderelection, in small).

Only the leader writes to the API (PodCIDR annotations, identities, policy status, events);
every replica watches and serves the state stream. Rules, as in client-go:

- Expiry is judged by the local clock from when this replica last saw the lease record
  change, never by comparing `renewTime` with our clock, so clock skew between nodes cannot
  make two replicas leader.
- Writes use the lease's resourceVersion (optimistic concurrency): of two candidates racing
  for an expired lease exactly one update succeeds.
- The leader renews every `retry_period`; if it has not renewed for `renew_deadline` (which is
  shorter than the lease duration) it stops acting as leader before anyone else may take over.
- `stop(release=True)` hands the lease back (empty holder) so a successor need not wait.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from membrane.operator.kube_client import KubeClient, KubeError
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.resources import LEASES

log = logging.getLogger(__name__)


def micro_time(when: datetime | None = None) -> str:
    """A MicroTime as the API server writes it."""
    return (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ElectionConfig:
    lease_name: str = "membrane-operator"
    namespace: str = "kube-system"
    identity: str = "membrane-operator"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")


class LeaderElector:
    def __init__(self, kube: KubeClient, config: ElectionConfig, metrics: OperatorMetrics,
                 on_started: Callable[[], None] = lambda: None,
                 on_stopped: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.clock = clock
        self._leader = False
        self._last_renew = 0.0
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, transitions)
        self._observed_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.leader_identity: str | None = None

    @property
    def is_leader(self) -> bool:
        """True only while a renewal succeeded within the renew deadline."""
        return self._leader and self.clock() - self._last_renew < self.config.renew_deadline

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True) -> None:
        """Stop campaigning; with `release`, hand the lease back (a crash would not)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._leader:
            if release:
                self._release()
            self._set_leader(False)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                ok = self.try_acquire_or_renew()
            except Exception as exc:  # noqa: BLE001 - any API failure is "not renewed"
                log.warning("lease %s: %s", self.config.lease_name, exc)
                ok = False
            if ok:
                self._last_renew = self.clock()
                self._set_leader(True)
            elif self._leader and self.clock() - self._last_renew >= self.config.renew_deadline:
                log.error("lease %s: not renewed for %.1fs, stepping down",
                          self.config.lease_name, self.config.renew_deadline)
                self._set_leader(False)
            self._stop.wait(self.config.retry_period)

    def _set_leader(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        self.metrics.is_leader.set(1 if leader else 0)
        if leader:
            self.metrics.leader_transitions.inc()
            log.info("became leader (%s)", self.config.identity)
            self.on_started()
        else:
            log.info("stopped leading (%s)", self.config.identity)
            self.on_stopped()

    # --- one round ----------------------------------------------------------------------------
    def try_acquire_or_renew(self) -> bool:
        cfg = self.config
        now = micro_time()
        try:
            lease = self.kube.get(LEASES, cfg.lease_name, cfg.namespace)
        except KubeError as exc:
            if not exc.not_found:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.lease_name, "namespace": cfg.namespace},
                    "spec": {"holderIdentity": cfg.identity,
                             "leaseDurationSeconds": round(cfg.lease_duration),
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            try:
                self.kube.create(LEASES, body, cfg.namespace)
            except KubeError as create_exc:
                if create_exc.conflict:
                    return False  # another candidate created it first
                raise
            self.leader_identity = cfg.identity
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"), spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        self.leader_identity = holder or None
        duration = spec.get("leaseDurationSeconds") or cfg.lease_duration
        if holder and holder != cfg.identity and self.clock() < self._observed_at + duration:
            return False  # someone else holds a lease that has not expired
        transitions = spec.get("leaseTransitions") or 0
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": cfg.lease_name, "namespace": cfg.namespace,
                             "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": {"holderIdentity": cfg.identity,
                         "leaseDurationSeconds": round(cfg.lease_duration),
                         "renewTime": now,
                         "acquireTime": spec.get("acquireTime") if holder == cfg.identity
                         and spec.get("acquireTime") else now,
                         "leaseTransitions": transitions if holder == cfg.identity
                         else transitions + 1}}
        try:
            self.kube.replace(LEASES, cfg.lease_name, body, cfg.namespace)
        except KubeError as exc:
            if exc.conflict:
                return False  # lost the race (or the lease moved on under us)
            raise
        if holder != cfg.identity:
            log.info("lease %s acquired from %r", cfg.lease_name, holder or "nobody")
        self.leader_identity = cfg.identity
        return True

    def _release(self) -> None:
        cfg = self.config
        try:
            lease = self.kube.get(LEASES, cfg.lease_name, cfg.namespace)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != cfg.identity:
                return
            now = micro_time()
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.lease_name, "namespace": cfg.namespace,
                                 "resourceVersion": lease["metadata"]["resourceVersion"]},
                    "spec": {"holderIdentity": None, "leaseDurationSeconds": 1,
                             "acquireTime": now, "renewTime": now,
                             "leaseTransitions": spec.get("leaseTransitions") or 0}}
            self.kube.replace(LEASES, cfg.lease_name, body, cfg.namespace)
            log.info("lease %s released", cfg.lease_name)
        except Exception as exc:  # noqa: BLE001 - best effort; expiry covers a failed release
            log.warning("lease %s: release failed: %s", cfg.lease_name, exc)
