"""The Kubernetes resources the operator watches, and how to address them over REST."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Resource:
    """A watched resource type (the served version, not every version)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """Collection path across all namespaces, e.g. `/apis/discovery.k8s.io/v1/endpointslices`."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/{self.plural}"

    def __str__(self) -> str:
        return self.plural


NODES = Resource("", "v1", "nodes", "Node", False)
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", False)
PODS = Resource("", "v1", "pods", "Pod", True)
SERVICES = Resource("", "v1", "services", "Service", True)
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True)
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True)
IDENTITIES = Resource("membrane.io", "v1alpha1", "membraneidentities", "MembraneIdentity", False)
PACKET_FILTERS = Resource("membrane.io", "v1alpha1", "packetfilters", "PacketFilter", False)
CIDR_DENY_LISTS = Resource("membrane.io", "v1alpha1", "cidrdenylists", "CIDRDenyList", False)

CSRS = Resource("certificates.k8s.io", "v1", "certificatesigningrequests",
                "CertificateSigningRequest", False)

WATCHED = (NODES, NAMESPACES, PODS, NETWORK_POLICIES, SERVICES, ENDPOINT_SLICES, IDENTITIES, PACKET_FILTERS,
           CIDR_DENY_LISTS)


def object_key(obj: dict[str, Any]) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name', '')}" if namespace else str(meta.get("name", ""))
