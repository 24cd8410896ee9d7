"""A stand-in for the identity stream, for tests of the policy manager on its own.

In the agent the policy manager's identities come from the stream's records
(`membrane.agent.identity_sources.StreamIdentities`), numbered by the one allocator of the
source (the operator's in a cluster, the node's in standalone, agent/local_source.py). A test
that drives the policy manager directly, without a builder and a stream, needs the numbers
those would give: this hands them out from the pod's labels with an `IdentityAllocator`, the
same numbering the sources use.
"""

from __future__ import annotations

import time

from membrane.identities import (
    CLUSTER_IDENTITY_MIN,
    IdentityAllocator,
    LabelSet,
    ReservedIdentity,
    identity_labels,
    reserved_labels,
)
from membrane.k8s_models import ObjectRef

GRACE_SECONDS = 60.0


class LabelIdentities:
    """`IdentitySource` numbering pods from their labels, in process (no persistence)."""

    def __init__(self) -> None:
        self.allocator = IdentityAllocator(CLUSTER_IDENTITY_MIN, grace=GRACE_SECONDS)
        self.held: dict[ObjectRef, LabelSet] = {}

    def assign(self, ref: ObjectRef, pod_labels: dict[str, str], ns_labels: dict[str, str]) -> int:
        labels = identity_labels(pod_labels, ref.namespace, ns_labels)
        old = self.held.get(ref)
        number = self.allocator.acquire(labels, str(ref)) if old != labels else self.allocator.lookup(labels)
        assert number is not None
        if old is not None and old != labels:
            self.allocator.release(old, str(ref), time.time())
        self.held[ref] = labels
        return number

    def release(self, ref: ObjectRef) -> None:
        old = self.held.pop(ref, None)
        if old is not None:
            self.allocator.release(old, str(ref), time.time())

    def identity_of(self, ref: ObjectRef) -> int | None:
        labels = self.held.get(ref)
        return self.allocator.lookup(labels) if labels is not None else None

    def gc(self) -> list[int]:
        return self.allocator.gc(time.time())

    def listing(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [
            {"identity": int(r), "labels": reserved_labels(r).to_strings(), "owners": [], "reserved": True}
            for r in ReservedIdentity]
        for number, labels in sorted(self.allocator.items().items()):
            rows.append({"identity": number, "labels": labels.to_strings(),
                         "owners": sorted(self.allocator.owners_of(number)), "reserved": False})
        return rows
