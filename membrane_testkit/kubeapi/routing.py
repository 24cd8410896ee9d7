"""Parse request paths into what they address: a discovery document or a resource (collection,
object, subresource), with the deprecated `/watch/` path prefix understood as `?watch=1`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote


@dataclass(frozen=True)
class Route:
    """What one path names. `doc` is set for discovery and health paths, empty for resources."""

    doc: str = ""  # "api" | "apis" | "group" | "resources" | "version" | "health" | ""
    group: str = ""
    version: str = ""
    plural: str = ""
    namespace: str | None = None  # None: cluster-scoped, or all namespaces
    name: str | None = None
    subresource: str | None = None
    watch_path: bool = False


_HEALTH = {"healthz", "readyz", "livez"}


def _resource_route(group: str, version: str, rest: list[str]) -> Route | None:
    watch_path = False
    if rest and rest[0] == "watch":
        watch_path, rest = True, rest[1:]
    namespace: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3 or any(part == "" for part in rest):
        return None
    return Route(group=group, version=version, plural=rest[0], namespace=namespace,
                 name=rest[1] if len(rest) > 1 else None, subresource=rest[2] if len(rest) > 2 else None,
                 watch_path=watch_path)


def parse_path(path: str) -> Route | None:
    """The route for a URL path (without query), or None for paths the server does not serve."""
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if len(parts) == 1 and parts[0] == "version":
        return Route(doc="version")
    if parts and parts[0] in _HEALTH:
        return Route(doc="health")
    if parts[:1] == ["api"]:
        if len(parts) == 1:
            return Route(doc="api")
        if len(parts) == 2:
            return Route(doc="resources", version=parts[1])
        return _resource_route("", parts[1], parts[2:])
    if parts[:1] == ["apis"]:
        if len(parts) == 1:
            return Route(doc="apis")
        if len(parts) == 2:
            return Route(doc="group", group=parts[1])
        if len(parts) == 3:
            return Route(doc="resources", group=parts[1], version=parts[2])
        return _resource_route(parts[1], parts[2], parts[3:])
    return None
