"""MembraneIdentity objects (pure): how a number and its security labels are written as an
object and read back. The operator's leader writes them to the API; standalone mode's local
source makes the same objects in process, so the state builder reads identities one way.
"""

from __future__ import annotations

from typing import Any

from membrane.identities import CLUSTER_IDENTITY_MAX, CLUSTER_IDENTITY_MIN, NAMESPACE_NAME_KEY, POD_SOURCE, LabelSet
from membrane.operator.crds import GROUP, VERSION

JSON = dict[str, Any]

MANAGED_BY = {"app.kubernetes.io/managed-by": "membrane-operator"}
NAMESPACE_LABEL = "membrane.io/namespace"


def mirrored_labels(labels: LabelSet) -> dict[str, str]:
    """The object labels of an identity: its pods' labels as they are (`k8s:app=web` -> `app=web`,
    so `kubectl get membraneidentities -l app=web` finds it), the namespace name as
    membrane.io/namespace, and managed-by (which a pod label of that name does not override).
    Pod labels are valid Kubernetes labels already; namespace labels are not mirrored (their
    keys would clash with pod label keys)."""
    out: dict[str, str] = {}
    for key, value in labels.items:
        if key.startswith(POD_SOURCE):
            out[key[len(POD_SOURCE):]] = value
        elif key == NAMESPACE_NAME_KEY:
            out[NAMESPACE_LABEL] = value
    out.update(MANAGED_BY)
    return out


def identity_object(identity: int, labels: LabelSet) -> JSON:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MembraneIdentity",
            "metadata": {"name": str(identity), "labels": mirrored_labels(labels)},
            "securityLabels": dict(labels.items)}


def parse_identity(obj: JSON) -> tuple[int, LabelSet] | None:
    """(number, labels) of a MembraneIdentity, or None for an object that is not one of ours."""
    try:
        identity = int((obj.get("metadata") or {}).get("name", ""))
    except ValueError:
        return None
    labels = obj.get("securityLabels")
    if not CLUSTER_IDENTITY_MIN <= identity <= CLUSTER_IDENTITY_MAX or not isinstance(labels, dict):
        return None
    return identity, LabelSet.of({str(k): str(v) for k, v in labels.items()})
