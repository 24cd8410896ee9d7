"""What the operator reads from raw Pod and Namespace JSON (pure).

Raw dicts rather than `membrane.k8s_models.Pod`: the operator must keep working on a pod the
strict model would refuse (a real API server already accepted it), and needs few fields.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from membrane.identities import LabelSet, identity_labels

JSON = dict[str, Any]
TERMINAL_PHASES = ("Succeeded", "Failed")


def meta(obj: JSON) -> JSON:
    return obj.get("metadata") or {}


def labels_of(obj: JSON) -> dict[str, str]:
    return dict(meta(obj).get("labels") or {})


def pod_key(pod: JSON) -> str:
    return f"{meta(pod).get('namespace', '')}/{meta(pod).get('name', '')}"


def needs_identity(pod: JSON) -> bool:
    """Pods on the pod network that are not finished (host-network pods are the host)."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    return not spec.get("hostNetwork") and status.get("phase") not in TERMINAL_PHASES \
        and not meta(pod).get("deletionTimestamp")


def _address(value: Any) -> str | None:
    """`value` as a canonical IP address string, or None when it is not one."""
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        return None


def pod_ips(pod: JSON) -> tuple[str, ...]:
    """The pod's addresses; anything that is not an IP address is left out (a malformed
    status must never reach an agent's ipcache)."""
    status = pod.get("status") or {}
    entries = status.get("podIPs") if isinstance(status, dict) else None
    ips = [entry.get("ip") for entry in entries or [] if isinstance(entry, dict) and entry.get("ip")]
    if not ips and isinstance(status, dict) and status.get("podIP"):
        ips = [status["podIP"]]
    valid = [a for a in (_address(ip) for ip in ips) if a is not None]
    return tuple(dict.fromkeys(valid))


def pod_identity_labels(pod: JSON, namespaces: dict[str, JSON]) -> LabelSet | None:
    """The pod's security labels, or None while its namespace is unknown (its labels are part
    of the identity: guessing them would allocate a wrong identity and churn it later)."""
    namespace = meta(pod).get("namespace", "")
    ns = namespaces.get(namespace)
    if ns is None:
        return None
    return identity_labels(labels_of(pod), namespace, labels_of(ns))
