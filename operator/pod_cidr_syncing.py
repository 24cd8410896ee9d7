"""PodCIDR assignment, the adapter half: read ranges from Nodes, record new ones on them.

The leader plans with `CidrPool.plan` over the cached Nodes and writes each new assignment as
the `membrane.io/pod-cidr` annotation with the Node's resourceVersion in the patch, so a write
based on a stale view fails (409) instead of overwriting, and the next pass replans. Agents
(and the state stream) read the node's range as `spec.podCIDR`, else the annotation.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Network
from typing import Any

from membrane.operator.cidr_pool import (  # noqa: F401 - re-exported
    POD_CIDR_ANNOTATION,
    CidrPool,
    NodeCidrFacts,
    PoolExhausted,
    node_facts,
    node_pod_cidr,
)
from membrane.operator.kube_client import KubeClient, KubeError
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.resources import NODES

log = logging.getLogger(__name__)

JSON = dict[str, Any]
class PodCidrSyncer:
    def __init__(self, kube: KubeClient, pool: CidrPool, metrics: OperatorMetrics) -> None:
        self.kube = kube
        self.pool = pool
        self.metrics = metrics

    def sync(self, nodes: list[JSON]) -> dict[str, IPv4Network]:
        """Give every node without a range one (leader only); returns the effective ranges."""
        by_name = {n["metadata"]["name"]: n for n in nodes}
        try:
            plan = self.pool.plan([node_facts(n) for n in nodes])
        except PoolExhausted as exc:
            log.error("PodCIDR pool: %s", exc)
            self.metrics.api_write_errors.labels("pod_cidr_exhausted").inc()
            return {}
        for note in plan.conflicts:
            log.warning("PodCIDR: %s; assigning a new range", note)
        for name, cidr in plan.to_write.items():
            meta = by_name[name]["metadata"]
            body = {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                                 "annotations": {POD_CIDR_ANNOTATION: str(cidr)}}}
            try:
                self.kube.merge_patch(NODES, name, body)
            except KubeError as exc:
                # 409: the node changed since we planned; 404: it is gone. Replan next pass.
                log.info("PodCIDR for %s not written (%s), will retry", name, exc.status)
                self.metrics.api_write_errors.labels("pod_cidr").inc()
                plan.effective.pop(name, None)
                continue
            self.metrics.pod_cidr_writes.inc()
            log.info("PodCIDR %s assigned to node %s", cidr, name)
        self.metrics.pod_cidrs.set(len(plan.effective))
        return plan.effective
