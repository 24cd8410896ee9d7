"""Legacy (unaggregated) discovery documents: /api, /api/v1, /apis, /apis/<group>[/<version>], /version."""

from __future__ import annotations

from typing import Any

from .resources import ALL_VERBS, Registry, ResourceType

JSON = dict[str, Any]

def server_version(version: str) -> JSON:
    """`GET /version` of a server that pretends to be Kubernetes `version` (`1.31`)."""
    major, _, minor = version.partition(".")
    return {"major": major, "minor": minor, "gitVersion": f"v{version}.0-membrane-kubeapi", "gitCommit": "",
            "gitTreeState": "clean", "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22",
            "compiler": "gc", "platform": "linux/amd64"}


def core_versions(server_address: str) -> JSON:
    """`GET /api`."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group_doc(registry: Registry, group: str) -> JSON:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in registry.versions_of(group)]
    return {"name": group, "versions": versions, "preferredVersion": versions[0] if versions else {}}


def group_list(registry: Registry) -> JSON:
    """`GET /apis`."""
    groups = [_group_doc(registry, g) for g in registry.groups()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [g for g in groups if g["versions"]]}


def group(registry: Registry, name: str) -> JSON | None:
    """`GET /apis/<group>`, or None when the group is not served."""
    doc = _group_doc(registry, name)
    if not doc["versions"]:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **doc}


def _resource_entries(rtype: ResourceType) -> list[JSON]:
    main: JSON = {"name": rtype.plural, "singularName": rtype.singular_name, "namespaced": rtype.namespaced,
                  "kind": rtype.kind, "verbs": list(ALL_VERBS)}
    if rtype.short_names:
        main["shortNames"] = list(rtype.short_names)
    if rtype.categories:
        main["categories"] = list(rtype.categories)
    entries = [main]
    if rtype.status_subresource:
        entries.append({"name": f"{rtype.plural}/status", "singularName": "", "namespaced": rtype.namespaced,
                        "kind": rtype.kind, "verbs": ["get", "patch", "update"]})
    return entries


def resource_list(registry: Registry, group_name: str, version: str) -> JSON | None:
    """`GET /api/v1` or `GET /apis/<group>/<version>`, or None when not served."""
    types = sorted((t for t in registry.all_types() if t.group == group_name and t.version == version),
                   key=lambda t: t.plural)
    if not types:
        return None
    resources = [entry for rtype in types for entry in _resource_entries(rtype)]
    group_version = f"{group_name}/{version}" if group_name else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}
