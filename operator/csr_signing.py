"""Approving and signing agents' CertificateSigningRequests (signer `membrane.io/agent`).

A request is approved only when the API server says the requester is the node the
certificate would name: the CSR's `spec.username` (filled in by the API server from the
requester's credentials, never by the requester) is `system:node:NAME` in group
`system:nodes` (kubelet credentials), or the agent's service account with the bound token's
`authentication.kubernetes.io/node-name` extra equal to NAME. The CSR itself must ask for NAME
and nothing else, a Node NAME must exist, and NAME is never the operator's own server name.
Anything else is denied with the reason in the Denied condition. `decide` is pure; the
`CsrSigner` writes approval and certificate through the API (leader only).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from membrane.operator.kube_client import KubeClient, KubeError
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.resources import CSRS
from membrane.tls.certificates import OPERATOR_NAME, Authority, CertificateError, request_name

log = logging.getLogger(__name__)

SIGNER = "membrane.io/agent"
NODE_EXTRA = "authentication.kubernetes.io/node-name"
ALLOWED_USAGES = {"digital signature", "key encipherment", "client auth", "server auth"}


@dataclass(frozen=True)
class Decision:
    approve: bool
    node: str
    reason: str


def _conditions(csr: dict[str, Any]) -> set[str]:
    return {str(c.get("type")) for c in (csr.get("status") or {}).get("conditions") or []}


def pending(csr: dict[str, Any]) -> bool:
    """Ours, and neither decided nor issued yet (an approved one still needs its certificate)."""
    spec = csr.get("spec") or {}
    status = csr.get("status") or {}
    return spec.get("signerName") == SIGNER and not status.get("certificate") \
        and not _conditions(csr) & {"Denied", "Failed"}


def requester_node(spec: dict[str, Any], agent_account: str) -> str | None:
    """The node the API server says made the request, or None."""
    user = str(spec.get("username") or "")
    groups = spec.get("groups") or []
    if user.startswith("system:node:") and "system:nodes" in groups:
        return user.removeprefix("system:node:") or None
    namespace, _, name = agent_account.partition("/")
    if user == f"system:serviceaccount:{namespace}:{name}":
        bound = (spec.get("extra") or {}).get(NODE_EXTRA) or []
        if len(bound) == 1 and bound[0]:
            return str(bound[0])
    return None


def decide(csr: dict[str, Any], node_exists: Callable[[str], bool], agent_account: str) -> Decision:
    spec = csr.get("spec") or {}
    try:
        pem = base64.b64decode(spec.get("request") or "", validate=True)
        name = request_name(pem)
    except (ValueError, CertificateError) as exc:
        return Decision(False, "", f"unusable request: {exc}")
    requester = requester_node(spec, agent_account)
    if requester is None:
        return Decision(False, name, f"requester {spec.get('username')!r} is not a node "
                        f"(system:node:NAME in system:nodes, or {agent_account} bound to a node)")
    if requester != name:
        return Decision(False, name, f"node {requester!r} asked for a certificate naming {name!r}")
    if name == OPERATOR_NAME:
        return Decision(False, name, f"{OPERATOR_NAME!r} is the operator's name")
    usages = set(spec.get("usages") or [])
    if not usages <= ALLOWED_USAGES:
        return Decision(False, name, f"usages {sorted(usages - ALLOWED_USAGES)} are not allowed")
    if not node_exists(name):
        return Decision(False, name, f"no Node named {name!r}")
    return Decision(True, name, f"node {name} asked for its own certificate")


class CsrSigner:
    def __init__(self, kube: KubeClient, authority: Authority, lifetime: float, agent_account: str,
                 metrics: OperatorMetrics) -> None:
        self.kube = kube
        self.authority = authority
        self.lifetime = dt.timedelta(seconds=lifetime)
        self.agent_account = agent_account
        self.metrics = metrics
        self._done: set[str] = set()  # uids decided (the cache may not show our write yet)

    def sync(self, csrs: list[dict[str, Any]], node_exists: Callable[[str], bool]) -> int:
        """Decide every pending request; returns how many were written (failures retry on
        the next pass)."""
        written = 0
        for csr in csrs:
            uid = str(csr["metadata"].get("uid") or csr["metadata"]["name"])
            if not pending(csr) or uid in self._done:
                continue
            try:
                written += self._handle(csr, node_exists)
                self._done.add(uid)
            except KubeError as exc:
                self.metrics.api_write_errors.labels("csr").inc()
                log.warning("CSR %s: write failed (%s); retrying", csr["metadata"]["name"], exc.status)
        return written

    def _handle(self, csr: dict[str, Any], node_exists: Callable[[str], bool]) -> int:
        name = csr["metadata"]["name"]
        decision = decide(csr, node_exists, self.agent_account)
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if not decision.approve:
            self._condition(csr, "Denied", "MembraneNodeIdentity", decision.reason, now)
            self.metrics.csrs.labels("denied").inc()
            log.warning("CSR %s denied: %s", name, decision.reason)
            return 1
        if "Approved" not in _conditions(csr):
            csr = self._condition(csr, "Approved", "MembraneNodeIdentity", decision.reason, now)
        pem = base64.b64decode(csr["spec"]["request"])
        cert = self.authority.sign_request(pem, decision.node, self.lifetime)
        status = {**(csr.get("status") or {}), "certificate": base64.b64encode(cert).decode()}
        self.kube.replace(CSRS, name, {**csr, "status": status}, subresource="status")
        self.metrics.csrs.labels("issued").inc()
        log.info("CSR %s: certificate issued to node %s", name, decision.node)
        return 1

    def _condition(self, csr: dict[str, Any], kind: str, reason: str, message: str, now: str) -> dict[str, Any]:
        status = dict(csr.get("status") or {})
        status["conditions"] = [*(status.get("conditions") or []), {
            "type": kind, "status": "True", "reason": reason, "message": message,
            "lastUpdateTime": now, "lastTransitionTime": now}]
        return self.kube.replace(CSRS, csr["metadata"]["name"], {**csr, "status": status}, subresource="approval")
