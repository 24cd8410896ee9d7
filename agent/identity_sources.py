"""Where the policy manager gets a pod's security identity from: the stream's records.

`StreamIdentities` holds what the stream carries, in both modes: the identity records and each
endpoint's number, allocated by the source's one allocator (the operator's leader in a cluster,
the node's own in standalone: agent/local_source.py with agent/identity_book.py). The agent
never allocates on the policy side. A local pod whose endpoint has not been streamed yet gets
the reserved INIT identity until it arrives (Kubernetes mode: the CNI ADD waits briefly).
`IdentitySource` is what the policy manager needs of it (tests give it a stand-in numbering
pods from their labels, membrane_testkit/label_identities.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from membrane.identities import LabelSet, ReservedIdentity, reserved_labels
from membrane.k8s_models import ObjectRef

INIT_IDENTITY = int(ReservedIdentity.INIT)


class IdentitySource(Protocol):
    """What `PolicyManager` needs: an identity per pod, released when the pod goes."""

    def assign(self, ref: ObjectRef, pod_labels: dict[str, str], ns_labels: dict[str, str]) -> int: ...

    def release(self, ref: ObjectRef) -> None: ...

    def identity_of(self, ref: ObjectRef) -> int | None: ...

    def listing(self) -> list[dict[str, object]]: ...

    def gc(self) -> list[int]: ...

    # The read side (`labels_of(identity)`, `len()`) flow enrichment and the metrics use.
    allocator: Any


def identity_count(source: object) -> int:
    """Identities in use (the metric), for either source."""
    return len(source.allocator)  # type: ignore[attr-defined]  # both identity sources carry an allocator


class _StreamedLabels:
    """The read side of `IdentityBook.allocator` (`labels_of`, `len`) over streamed identities,
    so consumers written against the book (flow enrichment) work in both modes."""

    def __init__(self, source: StreamIdentities) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def labels_of(self, identity: int) -> LabelSet | None:
        return self.source.labels_of(identity)


class StreamIdentities:
    """Identities as the operator's state stream says (Kubernetes mode). Thread-safe.

    The cluster syncer calls `set_pod`/`forget_pod` and `set_identity`/`forget_identity` as
    stream changes arrive; the policy manager calls `assign` (which only reads: labels are the
    operator's business) and `identity_of`; the CNI path waits with `wait_for_pod`.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pods: dict[ObjectRef, int] = {}  # streamed endpoint -> identity
        self.labels: dict[int, tuple[str, ...]] = {}  # streamed identity -> labels
        self.assigned: dict[ObjectRef, int] = {}  # what the policy manager was last told
        self.allocator = _StreamedLabels(self)

    def __len__(self) -> int:
        with self.cond:
            return len(self.labels)

    # --- fed by the stream -------------------------------------------------------------
    def set_pod(self, ref: ObjectRef, identity: int) -> None:
        with self.cond:
            self.pods[ref] = identity
            self.cond.notify_all()

    def forget_pod(self, ref: ObjectRef) -> None:
        with self.cond:
            self.pods.pop(ref, None)

    def set_identity(self, identity: int, labels: Iterable[str]) -> None:
        with self.cond:
            self.labels[identity] = tuple(labels)

    def forget_identity(self, identity: int) -> None:
        with self.cond:
            self.labels.pop(identity, None)

    def labels_of(self, identity: int) -> LabelSet | None:
        """The streamed identity's labels ("k8s:app=web", ...), None if unknown."""
        with self.cond:
            texts = self.labels.get(identity)
        return LabelSet.from_strings(texts) if texts is not None else None

    def known(self, ref: ObjectRef) -> int | None:
        with self.cond:
            return self.pods.get(ref)

    def wait_for_pod(self, ref: ObjectRef, timeout: float) -> int | None:
        """The pod's streamed identity, waiting up to `timeout` seconds for it; None if it did
        not arrive in time."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while ref not in self.pods:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.pods[ref]

    # --- IdentitySource ----------------------------------------------------------------
    def assign(self, ref: ObjectRef, pod_labels: dict[str, str], ns_labels: dict[str, str]) -> int:
        """The streamed identity; INIT for a (local) pod the operator has not streamed yet."""
        with self.cond:
            number = self.pods.get(ref, INIT_IDENTITY)
            self.assigned[ref] = number
            return number

    def release(self, ref: ObjectRef) -> None:
        with self.cond:
            self.assigned.pop(ref, None)

    def identity_of(self, ref: ObjectRef) -> int | None:
        with self.cond:
            return self.assigned.get(ref)

    def gc(self) -> list[int]:
        return []  # the operator garbage-collects identities cluster-wide

    def listing(self) -> list[dict[str, object]]:
        with self.cond:
            owners: dict[int, list[str]] = {}
            for ref, number in self.assigned.items():
                owners.setdefault(number, []).append(str(ref))
            rows: list[dict[str, object]] = [
                {"identity": int(r), "labels": reserved_labels(r).to_strings(),
                 "owners": sorted(owners.get(int(r), [])), "reserved": True} for r in ReservedIdentity]
            for number, labels in sorted(self.labels.items()):
                rows.append({"identity": number, "labels": list(labels), "owners": sorted(owners.get(number, [])),
                             "reserved": False})
            return rows

    def snapshot(self) -> Mapping[str, Any]:
        with self.cond:
            return {"identities": len(self.labels), "pods": len(self.pods)}
