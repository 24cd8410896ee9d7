"""Labelling this replica's own pod `membrane.io/operator-leader: "true"` while it leads.

The chart's Service selects that label (with `leader_label`), so agents' connections go to the
leader, the only replica that serves the state stream, instead of being refused by a standby
and retried. The label is an optimisation only: a standby refuses the stream whatever the
Service routes to it, so a stale label (a leader cut off from the API cannot remove its own)
costs a refused retry, never a wrong count.

A replica writes the label only when what it holds differs from what it last wrote; its first
pass removes a label a previous container of the same pod may have left. A failed write is
tried again after `RETRY_SECONDS`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from membrane.operator.kube_client import KubeClient, KubeError
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.resources import PODS

log = logging.getLogger(__name__)

LABEL = "membrane.io/operator-leader"
RETRY_SECONDS = 5.0


class LeaderLabeller:
    def __init__(self, kube: KubeClient, namespace: str, pod: str, metrics: OperatorMetrics,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.namespace, self.pod = namespace, pod
        self.metrics = metrics
        self.clock = clock
        self.written: bool | None = None  # what the pod's label says as far as we know
        self._failed_at: float | None = None

    def sync(self, leader: bool) -> bool:
        """Make the label say `leader`; True when it does (written now or before)."""
        if self.written == leader:
            return True
        if self._failed_at is not None and self.clock() - self._failed_at < RETRY_SECONDS:
            return False
        # Merge patch: null removes the label.
        body = {"metadata": {"labels": {LABEL: "true" if leader else None}}}
        try:
            self.kube.merge_patch(PODS, self.pod, body, self.namespace)
        except KubeError as exc:
            self._failed_at = self.clock()
            self.metrics.api_write_errors.labels("leader_label").inc()
            log.warning("leader label on %s/%s not written (%s)", self.namespace, self.pod, exc.status)
            return False
        self._failed_at = None
        self.written = leader
        log.info("pod label %s %s", LABEL, "set" if leader else "removed")
        return True
