"""Resource types the stand-in serves: the built-in ones and those that CRDs declare at run time."""

from __future__ import annotations

import dataclasses
import re
import threading
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

ALL_VERBS: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    """One served resource in one group version, with the behaviour the server gives it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    status_subresource: bool = False
    # Delete answers with the object (pods, services, custom resources) instead of a Status.
    return_deleted_object: bool = False
    # Served from a CustomResourceDefinition: strategic merge patch is refused, updates need a RV.
    custom: bool = False
    # Field selector labels besides metadata.name and metadata.namespace.
    field_labels: tuple[str, ...] = ()
    # What `status` becomes on create: kept as sent, or replaced by this (None: dropped).
    keep_status_on_create: bool = True
    initial_status: JSON | None = None
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        """`v1` for the core group, `group/version` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_key(self) -> tuple[str, str]:
        """All versions of a resource share one storage: (group, plural)."""
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        """Kind of the list answer, e.g. `PodList`."""
        return f"{self.kind}List"

    @property
    def singular_name(self) -> str:
        """Singular name, defaulting to the lowercased kind."""
        return self.singular or self.kind.lower()


_POD_FIELDS = ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
               "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName")
_EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                 "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                 "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type")

BUILTIN_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", False, short_names=("ns",), status_subresource=True,
                 field_labels=("status.phase",), keep_status_on_create=False, initial_status={"phase": "Active"}),
    ResourceType("", "v1", "nodes", "Node", False, short_names=("no",), status_subresource=True,
                 field_labels=("spec.unschedulable",)),
    ResourceType("", "v1", "pods", "Pod", True, short_names=("po",), status_subresource=True,
                 return_deleted_object=True, field_labels=_POD_FIELDS, keep_status_on_create=False,
                 initial_status={"phase": "Pending"}, categories=("all",)),
    ResourceType("", "v1", "services", "Service", True, short_names=("svc",), status_subresource=True,
                 return_deleted_object=True, keep_status_on_create=False,
                 initial_status={"loadBalancer": {}}, categories=("all",)),
    ResourceType("", "v1", "events", "Event", True, short_names=("ev",), field_labels=_EVENT_FIELDS),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",)),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, short_names=("sa",)),
    ResourceType("", "v1", "secrets", "Secret", True, field_labels=("type",)),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, short_names=("netpol",)),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True),
    # Spec written once by the requester (the server fills in who asked), conditions through
    # `approval`, the certificate through `status`.
    ResourceType("certificates.k8s.io", "v1", "certificatesigningrequests", "CertificateSigningRequest", False,
                 short_names=("csr",), status_subresource=True, keep_status_on_create=False,
                 initial_status={}, field_labels=("spec.signerName",)),
    ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False,
                 short_names=("crd", "crds"), status_subresource=True, keep_status_on_create=False,
                 initial_status={}),
)

DEFAULT_KUBERNETES_VERSION = "1.31"
# NetworkPolicyStatus (and the networkpolicies/status subresource) existed in 1.24-1.27 only.
_LAST_NETWORKPOLICY_STATUS = (1, 27)


def builtin_types(kubernetes_version: str) -> tuple[ResourceType, ...]:
    """The built-in types as the given minor version serves them."""
    major, _, minor = kubernetes_version.partition(".")
    out = []
    for rtype in BUILTIN_TYPES:
        if rtype.plural == "networkpolicies" and (int(major), int(minor)) <= _LAST_NETWORKPOLICY_STATUS:
            rtype = dataclasses.replace(rtype, status_subresource=True)
        out.append(rtype)
    return tuple(out)


_VERSION_RE = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key that puts versions in Kubernetes' preference order (GA > beta > alpha, newest first)."""
    match = _VERSION_RE.match(version)
    if not match:
        return (3, 0, 0, version)
    stage = {None: 0, "beta": 1, "alpha": 2}[match.group(2)]
    return (stage, -int(match.group(1)), -int(match.group(3) or 0), version)


def crd_types(crd: JSON) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition serves (one per served version)."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    types: list[ResourceType] = []
    for version in spec.get("versions", []):
        if not version.get("served", True):
            continue
        selectable = tuple(str(f.get("jsonPath", "")).lstrip(".") for f in version.get("selectableFields") or [])
        types.append(ResourceType(
            group=spec["group"], version=version["name"], plural=names["plural"], kind=names["kind"],
            namespaced=spec.get("scope", "Namespaced") == "Namespaced", singular=names.get("singular", ""),
            short_names=tuple(names.get("shortNames") or ()),
            status_subresource="status" in (version.get("subresources") or {}),
            return_deleted_object=True, custom=True, field_labels=selectable,
            keep_status_on_create="status" not in (version.get("subresources") or {}),
            categories=tuple(names.get("categories") or ()),
        ))
    return types


@dataclass
class Registry:
    """Which (group, version, plural) the server serves; CRDs add and remove entries."""

    kubernetes_version: str = DEFAULT_KUBERNETES_VERSION
    _types: dict[tuple[str, str, str], ResourceType] = field(default_factory=dict)
    _by_crd: dict[str, list[ResourceType]] = field(default_factory=dict)
    # (group, version, plural) -> the openAPIV3Schema a CRD gives that version (custom resources
    # are validated against it on every write).
    _schemas: dict[tuple[str, str, str], JSON] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for rtype in builtin_types(self.kubernetes_version):
            self._types[(rtype.group, rtype.version, rtype.plural)] = rtype

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The served type, or None."""
        with self._lock:
            return self._types.get((group, version, plural))

    def all_types(self) -> list[ResourceType]:
        """Every served type."""
        with self._lock:
            return list(self._types.values())

    def versions_of(self, group: str) -> list[str]:
        """Served versions of a group, preferred first."""
        with self._lock:
            versions = {v for (g, v, _p) in self._types if g == group}
        return sorted(versions, key=version_priority)

    def groups(self) -> list[str]:
        """Named groups (not the core group), built-ins first, in first-registered order."""
        with self._lock:
            seen: dict[str, None] = {}
            for (g, _v, _p) in self._types:
                if g:
                    seen.setdefault(g, None)
        return list(seen)

    def set_crd(self, crd: JSON) -> None:
        """Serve (or re-serve after an update) the resources a CRD declares."""
        name = crd["metadata"]["name"]
        types = crd_types(crd)
        schemas = {version["name"]: (version.get("schema") or {}).get("openAPIV3Schema")
                   for version in crd.get("spec", {}).get("versions", [])}
        with self._lock:
            for old in self._by_crd.pop(name, []):
                self._types.pop((old.group, old.version, old.plural), None)
                self._schemas.pop((old.group, old.version, old.plural), None)
            for rtype in types:
                self._types[(rtype.group, rtype.version, rtype.plural)] = rtype
                schema = schemas.get(rtype.version)
                if schema:
                    self._schemas[(rtype.group, rtype.version, rtype.plural)] = schema
            self._by_crd[name] = types

    def schema_of(self, rtype: ResourceType) -> JSON | None:
        """The CRD's schema for a custom resource's version (None: built-in, or none given)."""
        with self._lock:
            return self._schemas.get((rtype.group, rtype.version, rtype.plural))

    def remove_crd(self, name: str) -> list[ResourceType]:
        """Stop serving a CRD's resources; returns the types it served."""
        with self._lock:
            types = self._by_crd.pop(name, [])
            for old in types:
                self._types.pop((old.group, old.version, old.plural), None)
                self._schemas.pop((old.group, old.version, old.plural), None)
        return types
