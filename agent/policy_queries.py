"""The read-only query interface of the agent's policy state (flows, membranectl, trace).

Readers type against `PolicyQueries`, never against the policy manager: they cannot take its
lock, read its fields or record anything. The policy manager implements it; each answer is
taken under the manager's own lock and is a copy.
"""

from __future__ import annotations

from typing import Protocol

from membrane.identities import LabelSet
from membrane.k8s_models import ObjectRef
from membrane.policy import Direction, PodInfo, TraceResult


class PolicyQueries(Protocol):
    generation: int  # bumped by every apply: readers' caches are stale once it moves

    def peer_pods(self) -> list[PodInfo]: ...

    def pods_at(self, ip: str) -> list[ObjectRef]: ...

    def identity_labels(self, identity: int) -> LabelSet | None: ...

    def identity_listing(self) -> list[dict[str, object]]: ...

    def selecting(self, policy: ObjectRef) -> dict[Direction, list[ObjectRef]]: ...

    def isolating(self, pod: ObjectRef, direction: Direction) -> list[ObjectRef]: ...

    def rule_policies(self, rule_ref: int) -> list[str]: ...

    def trace(self, src: ObjectRef | str, dst: ObjectRef | str, port: str, protocol: str) -> TraceResult: ...
