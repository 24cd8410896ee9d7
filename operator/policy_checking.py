"""NetworkPolicy validation: which policies the state stream carries, and telling users why
the others are left out.

`check_policy` (pure) runs the same model validation and compilation the agents' policy engine
runs. The leader reports an invalid policy once per (uid, problem): a Warning Event on the
policy and an `Accepted=False` condition in its status naming the field and the reason (and
`Accepted=True` again once fixed). Invalid policies are skipped; every other policy keeps
being enforced, so one bad object never stops the rest.

Events (core/v1, served by every Kubernetes version) are the report that works everywhere.
The condition is written only where the API has a place for it: NetworkPolicyStatus and the
`networkpolicies/status` subresource existed in Kubernetes 1.24-1.27 only. Discovery tells
which (asked once per operator); from 1.28 on no condition is written at all, since a real
API server drops (or, under strict field validation, refuses) a `status` on the object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from membrane.k8s_models import FieldError, NetworkPolicy, ObjectValidationError, parse_object
from membrane.operator.kube_client import KubeClient, KubeError
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.resources import EVENTS, NETWORK_POLICIES
from membrane.policy import compile_policy

log = logging.getLogger(__name__)

JSON = dict[str, Any]
CONDITION_TYPE = "Accepted"
REASON_INVALID = "InvalidNetworkPolicy"
REASON_VALID = "Valid"
COMPONENT = "membrane-operator"


@dataclass(frozen=True)
class PolicyVerdict:
    errors: tuple[FieldError, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.errors

    @property
    def message(self) -> str:
        return "; ".join(str(e) for e in self.errors)


def check_policy(obj: JSON) -> PolicyVerdict:
    """Parse and compile one NetworkPolicy; the verdict lists (field path, reason) problems."""
    try:
        model = parse_object(obj)
        assert isinstance(model, NetworkPolicy)
        compile_policy(model)
    except ObjectValidationError as exc:
        return PolicyVerdict(tuple(exc.errors))
    except (ValueError, TypeError, AssertionError) as exc:
        return PolicyVerdict((FieldError("spec", str(exc) or type(exc).__name__),))
    return PolicyVerdict()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _our_condition(obj: JSON) -> JSON | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == CONDITION_TYPE:
            return cast(JSON, condition)
    return None




def serves_policy_status(discovery: JSON) -> bool:
    """Whether an APIResourceList of networking.k8s.io/v1 lists `networkpolicies/status`."""
    return any(r.get("name") == "networkpolicies/status" for r in discovery.get("resources") or [])


class PolicyChecker:
    def __init__(self, kube: KubeClient, metrics: OperatorMetrics, instance: str) -> None:
        self.kube = kube
        self.metrics = metrics
        self.instance = instance
        self._status_served: bool | None = None  # None: discovery not answered yet
        self._verdicts: dict[tuple[str, str], PolicyVerdict] = {}  # (uid, rv) -> verdict
        self._reported: set[tuple[str, str]] = set()  # (uid, message) already reported
        # uid -> (status, message) last written: the watch may still show the old object.
        self._written: dict[str, tuple[str, str]] = {}

    def verdict(self, obj: JSON) -> PolicyVerdict:
        meta = obj.get("metadata") or {}
        key = (meta.get("uid") or meta.get("name", ""), meta.get("resourceVersion") or "")
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = check_policy(obj)
            self._verdicts[key] = verdict
        return verdict

    def valid_policies(self, policies: list[JSON]) -> list[JSON]:
        """The policies to enforce (all replicas); forgets verdicts of vanished versions."""
        valid = [p for p in policies if self.verdict(p).valid]
        live = {((p.get("metadata") or {}).get("uid") or (p.get("metadata") or {}).get("name", ""),
                 (p.get("metadata") or {}).get("resourceVersion") or "") for p in policies}
        for key in list(self._verdicts):
            if key not in live:
                del self._verdicts[key]
        self.metrics.invalid_policies.set(len(policies) - len(valid))
        return valid

    def report(self, policies: list[JSON]) -> None:
        """Leader only: Events and conditions for policies whose verdict is not recorded yet."""
        for obj in policies:
            verdict = self.verdict(obj)
            condition = _our_condition(obj)
            meta = obj.get("metadata") or {}
            if verdict.valid:
                if condition is not None and condition.get("status") != "True" and self.status_served():
                    self._set_condition(obj, "True", REASON_VALID, "the policy is enforced")
                continue
            mark = (meta.get("uid", ""), verdict.message)
            already = condition is not None and condition.get("status") == "False" \
                and condition.get("message") == verdict.message
            if mark not in self._reported and not already:
                log.warning("NetworkPolicy %s/%s is invalid: %s", meta.get("namespace"),
                            meta.get("name"), verdict.message)
                self._event(obj, verdict.message)
            self._reported.add(mark)
            if not already and self.status_served():
                self._set_condition(obj, "False", REASON_INVALID, verdict.message)

    def status_served(self) -> bool:
        """Whether this API server has `networkpolicies/status` (asked until it answers)."""
        if self._status_served is None:
            try:
                self._status_served = serves_policy_status(self.kube.discover(NETWORK_POLICIES))
            except KubeError as exc:
                log.info("discovery of %s failed (%s), will retry", NETWORK_POLICIES.group_path, exc.status)
                return False
        return self._status_served

    def _set_condition(self, obj: JSON, status: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        if self._written.get(meta.get("uid", "")) == (status, message):
            return
        condition = {"type": CONDITION_TYPE, "status": status, "reason": reason,
                     "message": message, "lastTransitionTime": _now(),
                     "observedGeneration": meta.get("generation", 0)}
        body = {"status": {"conditions": [condition]}}
        try:
            self.kube.merge_patch(NETWORK_POLICIES, meta["name"], body, meta["namespace"], subresource="status")
            self._written[meta.get("uid", "")] = (status, message)
        except KubeError as exc:
            log.info("condition on %s not written (%s)", meta["name"], exc.status)
            self.metrics.api_write_errors.labels("policy_status").inc()

    def _event(self, obj: JSON, message: str) -> None:
        meta = obj["metadata"]
        now = _now()
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                               "name": meta["name"], "namespace": meta["namespace"],
                               "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": REASON_INVALID, "message": message[:1024], "type": "Warning",
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": self.instance, "action": "Validate",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.kube.create(EVENTS, event, meta["namespace"])
        except KubeError as exc:
            log.info("event for %s not written (%s)", meta["name"], exc.status)
            self.metrics.api_write_errors.labels("event").inc()
