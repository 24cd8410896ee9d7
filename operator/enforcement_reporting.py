"""Writing each NetworkPolicy's enforcement onto the object (leader only).

`EnforcementReporter` keeps the `EnforcementBook` (operator/enforcement_book.py) fed with the
state log's commits and, whenever an agent acks, a node comes or goes, or a commit lands,
merge-patches `metadata.annotations` (`membrane.io/enforced`, `membrane.io/enforced-generation`)
of the policies whose annotations are not what the book says. Annotations are what the real
API allows on every version (NetworkPolicy lost its status in 1.28) and do not bump
`metadata.generation`; the state stream leaves them out, so writing them changes nothing the
agents hold.

One thread; wake-ups are coalesced (acks of a thousand agents become a few passes), and an
annotation already written is not written again while the watch catches up. Other objects
whose enforcement is reported from the same acks join as `targets` (the prefilter's status:
operator/prefilter_status_reporting.py) and run in the same passes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from membrane.api.state_objects import Change
from membrane.operator import resources as res
from membrane.operator.cache import ObjectCache
from membrane.operator.enforcement_book import EnforcementBook
from membrane.operator.kube_client import KubeClient, KubeError
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.propagation import PropagationTracker

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.02  # after a wake-up, let the other acks of the same change arrive
IDLE_SECONDS = 5.0  # a pass at least this often (a failed write is retried)


class ReportTarget(Protocol):
    def committed(self, version: int, changes: Iterable[Change]) -> None: ...

    def forget(self) -> None: ...

    def report(self, nodes: list[str], acked: dict[str, int]) -> int: ...


class EnforcementReporter:
    def __init__(self, kube: KubeClient, cache: ObjectCache, tracker: PropagationTracker,
                 metrics: OperatorMetrics, is_leader: Callable[[], bool]) -> None:
        self.kube = kube
        self.cache = cache
        self.tracker = tracker
        self.metrics = metrics
        self.is_leader = is_leader
        self.book = EnforcementBook()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._written: dict[str, dict[str, str]] = {}
        self._thread: threading.Thread | None = None
        self.targets: list[ReportTarget] = []
        tracker.listeners.append(self._wake.set)

    def committed(self, version: int, changes: Iterable[Change]) -> None:
        with self._lock:
            self.book.committed(version, changes)
        for target in self.targets:
            target.committed(version, changes)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="enforcement-reporter", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(IDLE_SECONDS)
            if self._stop.wait(COALESCE_SECONDS):
                break
            self._wake.clear()
            if not self.is_leader():
                self._written.clear()  # a new term starts from what the API says
                for target in self.targets:
                    target.forget()
                continue
            try:
                self.report()
            except Exception:
                log.exception("writing enforcement annotations failed")

    def report(self) -> int:
        """One pass: patch the policies whose annotations differ; returns how many were written."""
        nodes = [str((n.get("metadata") or {}).get("name", "")) for n in self.cache.list(res.NODES)]
        with self._lock:
            wanted = self.book.annotations(nodes, self.tracker.acked_versions())
        written = 0
        for key, values in wanted.items():
            obj = self.cache.get(res.NETWORK_POLICIES, key)
            if obj is None:
                continue
            meta = obj.get("metadata") or {}
            current = meta.get("annotations") or {}
            if all(current.get(k) == v for k, v in values.items()):
                self._written[key] = values
                continue
            if self._written.get(key) == values:
                continue  # written; the watch has not shown it yet
            try:
                self.kube.merge_patch(res.NETWORK_POLICIES, str(meta.get("name")), {"metadata": {"annotations": values}},
                                      str(meta.get("namespace")))
            except KubeError as exc:
                if not exc.not_found:  # deleted meanwhile: nothing to report on
                    log.info("enforcement annotation on %s not written (%s)", key, exc.status)
                    self.metrics.api_write_errors.labels("policy_enforced").inc()
                continue
            self._written[key] = values
            written += 1
        for key in set(self._written) - set(wanted):
            del self._written[key]
        acked = self.tracker.acked_versions()
        for target in self.targets:
            written += target.report(nodes, acked)
        return written
