"""Request dispatch and the read verbs: discovery, get, list (with pagination and exact versions)
and watch requests (streamed by `watching`). The write verbs are in `writing`.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Callable
from typing import Any

from . import discovery
from .messages import Request, Response
from .resources import Registry, ResourceType
from .routing import Route, parse_path
from .statuses import ApiError, bad_request, gone
from .storing import Key, Store
from .validating import CURRENT_WRITE, SchemaBook, WriteContext, parse_mode, warning_header
from .watching import WatchSpec, present
from .writing import Writes

JSON = dict[str, Any]

__all__ = ["Api"]


def _flag(value: str | None) -> bool:
    """A boolean query parameter (the Python client sends `True`, Go clients `true`)."""
    return (value or "").lower() in ("1", "true")


def _parse_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"invalid {what}: {text!r}") from None
    if value < 0:
        raise bad_request(f"invalid {what}: {text!r}")
    return value


def _serves_subresource(rtype: ResourceType, subresource: str) -> bool:
    if subresource == "status":
        return rtype.status_subresource
    return subresource == "approval" and rtype.plural == "certificatesigningrequests"


class Api(Writes):
    """Answers requests against one store and registry; the HTTP layer is in `serving`."""

    def __init__(self, store: Store, registry: Registry, server_address: Callable[[], str],
                 max_watch_seconds: float = 1800.0, schemas: SchemaBook | None = None,
                 server_version: JSON | None = None) -> None:
        self.store = store
        self.registry = registry
        self.server_address = server_address
        self.max_watch_seconds = max_watch_seconds
        self.schemas = schemas
        self.server_version = server_version or discovery.server_version(registry.kubernetes_version)

    # --- dispatch ----------------------------------------------------------------------------
    def handle(self, req: Request) -> Response | WatchSpec:
        """Answer one request; raises ApiError for failures. Writes carry the warnings
        (unknown fields dropped under `fieldValidation=Warn`) in a `Warning` header."""
        context = WriteContext(parse_mode(req.query.get("fieldValidation")) if req.method != "GET" else "Warn")
        token = CURRENT_WRITE.set(context)
        try:
            result = self._handle(req)
        finally:
            CURRENT_WRITE.reset(token)
        if context.warnings and isinstance(result, Response):
            result = dataclasses.replace(result, headers={**result.headers,
                                                          "Warning": warning_header(context.warnings)})
        return result

    def _handle(self, req: Request) -> Response | WatchSpec:
        route = parse_path(req.path)
        if route is None:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        if route.doc:
            if req.method != "GET":
                raise ApiError(405, f"{req.method} is not supported on {req.path}", "MethodNotAllowed")
            return self._discovery(route)
        rtype = self.registry.lookup(route.group, route.version, route.plural)
        if rtype is None or (route.namespace is not None and not rtype.namespaced) \
                or (rtype.namespaced and route.namespace is None and route.name is not None) \
                or (route.subresource is not None and not _serves_subresource(rtype, route.subresource)):
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        watching = route.watch_path or _flag(req.query.get("watch"))
        if req.method == "GET" and route.name is None:
            return self._watch(rtype, route, req) if watching else self._list(rtype, route, req)
        if req.method == "GET" and watching:
            return self._watch(rtype, route, req)
        if req.method == "POST" and route.name is None and (route.namespace is not None or not rtype.namespaced):
            return self._create(rtype, route, req)
        if req.method == "DELETE" and route.name is None:
            return self._delete_collection(rtype, route, req)
        if route.name is not None:
            key: Key = (rtype.group, rtype.plural, route.namespace or "", route.name)
            if req.method == "GET":
                return Response(200, present(self._existing(rtype, key), rtype))
            if req.method == "PUT" and route.subresource == "approval":
                return self._approve(rtype, key, self._body(req))
            if req.method == "PUT":
                return self._update(rtype, key, self._body(req), route.subresource == "status")
            if req.method == "PATCH":
                return self._patch(rtype, route, key, req)
            if req.method == "DELETE" and route.subresource is None:
                return self._delete(rtype, key, self._optional_body(req))
        raise ApiError(405, f"{req.method} is not supported on {req.path}", "MethodNotAllowed")

    def _discovery(self, route: Route) -> Response:
        doc: JSON | str | None
        if route.doc == "version":
            doc = self.server_version
        elif route.doc == "health":
            doc = "ok"
        elif route.doc == "api":
            doc = discovery.core_versions(self.server_address())
        elif route.doc == "apis":
            doc = discovery.group_list(self.registry)
        elif route.doc == "group":
            doc = discovery.group(self.registry, route.group)
        else:
            doc = discovery.resource_list(self.registry, route.group, route.version)
        if doc is None:
            raise ApiError(404, "the server could not find the requested resource", "NotFound")
        return Response(200, doc)

    # --- list and watch ----------------------------------------------------------------------
    def _list(self, rtype: ResourceType, route: Route, req: Request) -> Response:
        matches = self._matcher(rtype, req)
        rv_text = req.query.get("resourceVersion", "")
        match_mode = req.query.get("resourceVersionMatch", "")
        token = req.query.get("continue", "")
        limit = _parse_int(req.query["limit"], "limit") if req.query.get("limit") else 0
        start: tuple[str, str] | None = None
        if match_mode and not rv_text:
            raise bad_request("resourceVersionMatch is forbidden unless resourceVersion is provided")
        if token:
            list_rv, start = self._decode_continue(token)
            try:
                items = self.store.snapshot(rtype.group, rtype.plural, route.namespace, list_rv)
            except ApiError:
                raise gone("The provided continue parameter is too old to display a consistent list result. "
                           "You can start a new list without the continue parameter.") from None
        elif rv_text and rv_text != "0" and match_mode == "Exact":
            list_rv = self._future_check(_parse_int(rv_text, "resourceVersion"))
            items = self.store.snapshot(rtype.group, rtype.plural, route.namespace, list_rv)
        else:
            if rv_text and rv_text != "0":
                self._future_check(_parse_int(rv_text, "resourceVersion"))
            with self.store.cond:
                list_rv = self.store.rv
                items = self.store.items(rtype.group, rtype.plural, route.namespace)
        selected = [(k, o) for k, o in items if (start is None or (k[2], k[3]) > start) and matches(o)]
        metadata: JSON = {"resourceVersion": str(list_rv)}
        if limit and len(selected) > limit:
            last = selected[limit - 1][0]
            raw = json.dumps({"rv": list_rv, "start": [last[2], last[3]]}).encode()
            metadata["continue"] = base64.urlsafe_b64encode(raw).decode()
            if not req.query.get("labelSelector") and not req.query.get("fieldSelector"):
                metadata["remainingItemCount"] = len(selected) - limit
            selected = selected[:limit]
        if rtype.custom:
            out = [present(o, rtype) for _k, o in selected]
        else:
            out = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for _k, o in selected]
        return Response(200, {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": metadata,
                              "items": out})

    @staticmethod
    def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode()))
            return int(data["rv"]), (str(data["start"][0]), str(data["start"][1]))
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
            raise bad_request("continue key is not valid") from None

    def _future_check(self, rv: int) -> int:
        with self.store.cond:
            if rv > self.store.rv and not self.store.cond.wait_for(lambda: self.store.rv >= rv, timeout=1.0):
                raise ApiError(504, f"Timeout: Too large resource version: {rv}, current: {self.store.rv}",
                               "Timeout", {"causes": [{"reason": "ResourceVersionTooLarge",
                                                       "message": "Too large resource version"}],
                                           "retryAfterSeconds": 1})
        return rv

    def _watch(self, rtype: ResourceType, route: Route, req: Request) -> WatchSpec:
        matches = self._matcher(rtype, req)
        if route.name is not None:
            name, inner = route.name, matches
            matches = lambda obj: obj.get("metadata", {}).get("name") == name and inner(obj)  # noqa: E731
        rv_text = req.query.get("resourceVersion", "")
        send_initial = _flag(req.query.get("sendInitialEvents"))
        since = None if rv_text in ("", "0") or send_initial else _parse_int(rv_text, "resourceVersion")
        timeout = float(_parse_int(req.query["timeoutSeconds"], "timeoutSeconds")) \
            if req.query.get("timeoutSeconds") else self.max_watch_seconds
        bookmarks = _flag(req.query.get("allowWatchBookmarks"))
        return WatchSpec(rtype, route.namespace, matches, since, min(timeout, self.max_watch_seconds),
                         bookmarks, send_initial and bookmarks)

