"""Writing the `.status` of PacketFilters and CIDRDenyLists (leader only).

A target of the `EnforcementReporter` (operator/enforcement_reporting.py): it hears the state
log's commits and runs in the reporter's coalesced passes (an ack, a node coming or going, a
commit, a watch event), so a thousand agents' acks become a few writes. Each pass compares the
status each object should carry (operator/prefilter_status.py) with what the watch shows and
merge-patches the `status` subresource where they differ. The subresource never bumps
`metadata.generation` and the stream carries specs only, so writing it changes nothing the
agents hold (no loop). A status already written is not written again while the watch catches up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from membrane.api.state_objects import Change, Kind, StateKey
from membrane.k8s_models import FieldError
from membrane.operator import resources as res
from membrane.operator.cache import ObjectCache
from membrane.operator.kube_client import KubeClient, KubeError
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.prefilter_status import JSON, PrefilterStatusBook, differs, status
from membrane.prefilter_checking import object_errors

log = logging.getLogger(__name__)

WATCHED = ((res.PACKET_FILTERS, Kind.PACKET_FILTER), (res.CIDR_DENY_LISTS, Kind.CIDR_DENY_LIST))


class PrefilterVerdicts:
    """Each object's problems (membrane/prefilter_checking.py, lenient: the API server pruned
    unknown fields), checked once per generation (the status subresource's writes change the
    resourceVersion, never the spec or the generation: a 20,000-prefix list is not checked again
    for each); an invalid one is logged once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], list[FieldError]] = {}

    def __call__(self, obj: JSON) -> list[FieldError]:
        meta = obj.get("metadata") or {}
        generation = meta.get("generation")
        key = (str(obj.get("kind", "")), str(meta.get("uid") or meta.get("name", "")),
               f"g{generation}" if generation else f"rv{meta.get('resourceVersion') or ''}")
        with self._lock:
            found = self._seen.get(key)
        if found is None:
            found = object_errors(obj, strict=False)
            if found:
                log.warning("%s %s is invalid and streamed to no node: %s", key[0], meta.get("name"),
                            "; ".join(str(e) for e in found))
            with self._lock:
                if len(self._seen) > 4096:  # old versions' verdicts: drop them all, recomputed on need
                    self._seen.clear()
                self._seen[key] = found
        return found


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PrefilterStatusReporter:
    def __init__(self, kube: KubeClient, cache: ObjectCache, metrics: OperatorMetrics,
                 errors: Callable[[JSON], list[FieldError]], now: Callable[[], str] = _now) -> None:
        self.kube = kube
        self.cache = cache
        self.metrics = metrics
        self.errors = errors  # the verdict the state builder used (cached per object version)
        self.now = now
        self.book = PrefilterStatusBook()
        self._lock = threading.Lock()
        self._written: dict[StateKey, JSON] = {}
        # Node -> the newest version its agent acked, kept while it is disconnected: an agent
        # keeps enforcing what its maps hold while its stream is down, so a node whose agent
        # restarts still counts for the generation it last confirmed (never for a newer one).
        self._last_acked: dict[str, int] = {}

    def committed(self, version: int, changes: Iterable[Change]) -> None:
        with self._lock:
            self.book.committed(version, changes)

    def forget(self) -> None:
        """Not leading (any more): a new term starts from what the API says."""
        self._written.clear()

    def report(self, nodes: list[str], acked: dict[str, int]) -> int:
        """One pass: patch the statuses that differ; returns how many were written."""
        written = 0
        seen: set[StateKey] = set()
        self._last_acked.update(acked)
        for node in set(self._last_acked) - set(nodes):
            del self._last_acked[node]  # the Node object is gone
        acked = dict(self._last_acked)
        for resource, kind in WATCHED:
            for obj in self.cache.list(resource):
                name = str((obj.get("metadata") or {}).get("name", ""))
                key = (kind, name)
                seen.add(key)
                with self._lock:
                    enforcement = self.book.enforcement(key, nodes, acked)
                wanted = status(obj, self.errors(obj), enforcement, self.now())
                if not differs(obj.get("status"), wanted):
                    self._written[key] = wanted
                    continue
                if key in self._written and not differs(self._written[key], wanted):
                    continue  # written; the watch has not shown it yet
                try:
                    self.kube.merge_patch(resource, name, {"status": wanted}, subresource="status")
                except KubeError as exc:
                    if not exc.not_found:  # deleted meanwhile: nothing to report on
                        log.info("status of %s %s not written (%s)", resource.kind, name, exc.status)
                        self.metrics.api_write_errors.labels("prefilter_status").inc()
                    continue
                self._written[key] = wanted
                written += 1
        for key in set(self._written) - seen:
            del self._written[key]
        return written
