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
    def group_path(self) -> str:
        """The API group version's path: `/api/v1` or `/apis/GROUP/VERSION`."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def path(self) -> str:
        """Collection path across all namespaces, e.g. `/apis/discovery.k8s.io/v1/endpointslices`."""
        return f"{self.group_path}/{self.plural}"

    def collection_path(self, namespace: str | None = None) -> str:
        """The collection in one namespace (namespaced kinds), else across all of them."""
        if namespace is None:
            return self.path
        if not self.namespaced:
            raise ValueError(f"{self.plural} are cluster-scoped: no namespace {namespace!r}")
        return f"{self.group_path}/namespaces/{namespace}/{self.plural}"

    def object_path(self, name: str, namespace: str | None = None, subresource: str | None = None) -> str:
        """One object (or its subresource, e.g. `status`)."""
        if not name or "/" in name:
            raise ValueError(f"bad {self.kind} name {name!r}")
        if self.namespaced and not namespace:
            raise ValueError(f"{self.plural} are namespaced: {name!r} needs a namespace")
        path = f"{self.collection_path(namespace if self.namespaced else None)}/{name}"
        return f"{path}/{subresource}" if subresource else path

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
# Written, not watched.
SECRETS = Resource("", "v1", "secrets", "Secret", True)
CONFIG_MAPS = Resource("", "v1", "configmaps", "ConfigMap", True)
EVENTS = Resource("", "v1", "events", "Event", True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease", True)
CUSTOM_RESOURCE_DEFINITIONS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                                       "CustomResourceDefinition", False)

WATCHED = (NODES, NAMESPACES, PODS, NETWORK_POLICIES, SERVICES, ENDPOINT_SLICES, IDENTITIES, PACKET_FILTERS,
           CIDR_DENY_LISTS)


def object_key(obj: dict[str, Any]) -> str:
    """`namespace/name`, or `name` for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name', '')}" if namespace else str(meta.get("name", ""))
