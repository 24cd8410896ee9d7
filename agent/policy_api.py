"""membranectl's policy and identity questions, answered through the policy state's read-only
query interface (agent/policy_queries.py) and the policy records the agent enforces (the
consumer's, in either mode).

`policy trace` runs the same engine output the datapath is fed from, so its answer is what
the kernel decides for a new connection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from membrane.api.state_objects import Kind, PolicyState, StateKey, StateObject
from membrane.k8s_models import ObjectRef
from membrane.policy import Direction

from .api_serving import RequestError
from .policy_queries import PolicyQueries
from .policy_records import policy_model


class Records(Protocol):
    """The records the agent holds (the consumer), read under their owner's lock."""

    def get(self, kind: Kind, key: str) -> StateObject | None: ...

    def listing(self, kind: Kind) -> Mapping[StateKey, StateObject]: ...


def _selected(manager: PolicyQueries, ref: ObjectRef) -> dict[str, list[str]]:
    """Which pods the policy isolates, per direction."""
    found: dict[str, list[str]] = {"ingress": [], "egress": []}
    for direction, pods in manager.selecting(ref).items():  # every pod of the cluster
        found[Direction(direction).label] = [str(pod) for pod in pods]
    return found


def policy_list(manager: PolicyQueries, records: Records) -> list[dict[str, Any]]:
    rows = []
    for _, state in sorted(records.listing(Kind.POLICY).items()):
        if not isinstance(state, PolicyState):
            continue
        try:
            obj = policy_model(state)
        except ValueError:
            continue  # a record the models refuse is not enforced either
        selected = _selected(manager, obj.ref)
        rows.append({"policy": str(obj.ref), "types": ",".join(str(getattr(t, "value", t)).lower() for t in obj.spec.effective_policy_types()),
                     "ingress_rules": len(obj.spec.ingress or []), "egress_rules": len(obj.spec.egress or []),
                     "selected_ingress": len(selected["ingress"]), "selected_egress": len(selected["egress"])})
    return rows


def policy_get(manager: PolicyQueries, records: Records, name: str) -> dict[str, Any]:
    ref = ObjectRef.parse(name if "/" in name else f"default/{name}")
    state = records.get(Kind.POLICY, str(ref))
    if not isinstance(state, PolicyState):
        raise RequestError(f"no NetworkPolicy {ref}", code=404)
    return {"policy": str(ref), "selected": _selected(manager, ref), "object": json.loads(state.object_json)}


def _party(text: str) -> ObjectRef | str:
    if "/" in text and not text[0].isdigit():
        return ObjectRef.parse(text)
    return text.split("/")[0] if text.endswith("/32") else text


def policy_trace(manager: PolicyQueries, src: str, dst: str, port: str) -> dict[str, Any]:
    number, _, proto = port.partition("/")
    try:
        result = manager.trace(_party(src), _party(dst), number, (proto or "TCP").upper())
    except (ValueError, KeyError) as exc:
        raise RequestError(f"cannot trace: {exc}") from exc
    return {"verdict": result.verdict.name.lower(), "lines": result.lines()}


def identity_list(manager: PolicyQueries) -> list[dict[str, Any]]:
    return manager.identity_listing()


def identity_get(manager: PolicyQueries, number: int) -> dict[str, Any]:
    for row in manager.identity_listing():
        if row["identity"] == number:
            return row
    raise RequestError(f"no identity {number}", code=404)
