"""Write verbs: create, update (PUT), patch, delete and deletecollection, with the side effects
kube-apiserver's registries have: optimistic concurrency on metadata.resourceVersion, status
subresources that own `status` alone, generation bumps on spec changes, no-op updates that write
nothing, finalizers that turn a delete into setting deletionTimestamp, namespaces that must exist
and take their content with them, and CRDs whose resources are served once created.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .matching import field_predicate, label_predicate
from .messages import ADMIN, Request, Response
from .patching import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from .resources import Registry, ResourceType
from .routing import Route
from .statuses import ApiError, already_exists, bad_request, conflict, invalid, not_found, success_body
from .storing import Key, Store
from .validating import CURRENT_WRITE, SchemaBook, admit, admit_custom
from .watching import present

JSON = dict[str, Any]

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_VOLATILE_META = ("resourceVersion", "managedFields")


def now_rfc3339() -> str:
    """The current time as Kubernetes writes timestamps."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip(obj: JSON, drop_status: bool) -> JSON:
    return {k: v for k, v in obj.items() if k != "metadata" and not (drop_status and k == "status")}


def _same(a: JSON, b: JSON) -> bool:
    meta_a = {k: v for k, v in a.get("metadata", {}).items() if k not in _VOLATILE_META}
    meta_b = {k: v for k, v in b.get("metadata", {}).items() if k not in _VOLATILE_META}
    return meta_a == meta_b and _strip(a, False) == _strip(b, False)


class Writes:
    """The write verbs over a store and registry (mixed into `handling.Api`)."""

    store: Store
    registry: Registry
    schemas: SchemaBook | None  # None: writes are not checked against schemas

    # --- helpers -----------------------------------------------------------------------------
    def _existing(self, rtype: ResourceType, key: Key) -> JSON:
        obj = self.store.get(key)
        if obj is None:
            raise not_found(rtype.plural, rtype.group, key[3])
        return obj

    @staticmethod
    def _body(req: Request) -> JSON:
        try:
            body = json.loads(req.body or b"null")
        except ValueError as exc:
            raise bad_request(f"the body of the request could not be decoded as JSON: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a JSON object")
        return body

    def _admit(self, rtype: ResourceType, body: JSON, name: str) -> JSON:
        """The body as the server keeps it after schema validation (see `validating`): unknown
        fields dropped (with a warning) or refused, undecodable or incomplete objects refused."""
        custom_schema = self.registry.schema_of(rtype) if rtype.custom else None
        if (self.schemas is None or rtype.custom) and custom_schema is None:
            return body
        context = CURRENT_WRITE.get()
        mode = context.mode if context is not None else "Warn"
        typed = {**body, "apiVersion": rtype.api_version, "kind": rtype.kind}
        if custom_schema is not None:
            obj, warnings = admit_custom(custom_schema, typed, mode, name, rtype.plural, rtype.group)
        else:
            assert self.schemas is not None
            obj, warnings = admit(self.schemas, typed, mode, name, rtype.plural, rtype.group)
        if context is not None:
            context.warnings.extend(warnings)
        return obj

    def _optional_body(self, req: Request) -> JSON:
        return self._body(req) if req.body.strip() else {}

    def _matcher(self, rtype: ResourceType, req: Request) -> Callable[[JSON], bool]:
        labels = label_predicate(req.query.get("labelSelector"))
        fields = field_predicate(req.query.get("fieldSelector"), rtype.field_labels, rtype.custom)
        return lambda obj: labels(obj) and fields(obj)

    # --- writes ------------------------------------------------------------------------------
    def _create(self, rtype: ResourceType, route: Route, req: Request, body: JSON | None = None) -> Response:
        body = self._body(req) if body is None else body
        meta = dict(body.get("metadata") or {})
        if rtype.namespaced:
            assert route.namespace is not None
            if meta.get("namespace") not in (None, "", route.namespace):
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
            if self.store.get(("", "namespaces", "", route.namespace)) is None:
                raise not_found("namespaces", "", route.namespace)
        name = meta.get("name") or ""
        generate = meta.get("generateName") or ""
        if not name and generate:
            name = generate + "".join(random.choice(_NAME_CHARS) for _ in range(5))
        self._validate_name(rtype, name)
        body = self._admit(rtype, body, name)
        meta = {**dict(body.get("metadata") or {}), "name": name}
        key: Key = (rtype.group, rtype.plural, route.namespace or "", name)
        obj: JSON = {**body, "apiVersion": rtype.api_version, "kind": rtype.kind}
        for drop in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink",
                     "managedFields"):
            meta.pop(drop, None)
        meta.update(name=name, uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
        if rtype.namespaced:
            meta["namespace"] = route.namespace
        else:
            meta.pop("namespace", None)
        obj["metadata"] = meta
        if not rtype.keep_status_on_create:
            obj.pop("status", None)
            if rtype.initial_status is not None:
                obj["status"] = dict(rtype.initial_status)
        self._defaults(rtype, obj)
        if rtype.plural == "certificatesigningrequests" and rtype.group == "certificates.k8s.io":
            self._requester(obj, req)
        if req.query.get("dryRun"):
            return Response(201, present(obj, rtype))
        with self.store.cond:
            if self.store.get(key) is not None:
                raise already_exists(rtype.plural, rtype.group, name)
            change = self.store.commit(key, obj)
            if rtype.plural == "customresourcedefinitions" and rtype.group == "apiextensions.k8s.io":
                self.registry.set_crd(change.obj)
        return Response(201, present(change.obj, rtype))

    def _validate_name(self, rtype: ResourceType, name: str) -> None:
        if not name:
            raise invalid(rtype.kind, rtype.plural, rtype.group, name, "metadata.name",
                          "name or generateName is required", cause="FieldValueRequired")
        pattern, limit = (_LABEL, 63) if rtype.plural == "namespaces" and not rtype.group else (_SUBDOMAIN, 253)
        if len(name) > limit or not pattern.match(name):
            raise invalid(rtype.kind, rtype.plural, rtype.group, name, "metadata.name",
                          f"a lowercase RFC 1123 {'label' if limit == 63 else 'subdomain'} must consist of lower "
                          "case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                          "character", value=name)

    def _defaults(self, rtype: ResourceType, obj: JSON) -> None:
        """Per-resource defaulting and validation the rest of the system relies on."""
        meta = obj["metadata"]
        if rtype.plural == "namespaces" and not rtype.group:
            meta["labels"] = {**(meta.get("labels") or {}), "kubernetes.io/metadata.name": meta["name"]}
        if rtype.plural == "customresourcedefinitions" and rtype.group == "apiextensions.k8s.io":
            self._crd_defaults(rtype, obj)

    def _crd_defaults(self, rtype: ResourceType, obj: JSON) -> None:
        spec = obj.get("spec") or {}
        names = spec.get("names") or {}
        name = obj["metadata"]["name"]

        def fail(path: str, detail: str, value: Any = None) -> ApiError:
            return invalid(rtype.kind, rtype.plural, rtype.group, name, path, detail, value=value)

        group, plural = spec.get("group", ""), names.get("plural", "")
        if "." not in group:
            raise fail("spec.group", "should be a domain with at least one dot", group)
        if not plural or not names.get("kind"):
            raise fail("spec.names", "plural and kind are required", names)
        if name != f"{plural}.{group}":
            raise fail("metadata.name", "must be spec.names.plural+\".\"+spec.group", name)
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            raise fail("spec.scope", "supported values: \"Cluster\", \"Namespaced\"", spec.get("scope"))
        versions = spec.get("versions") or []
        storage = [v.get("name") for v in versions if v.get("storage")]
        if not versions or len(storage) != 1:
            raise fail("spec.versions", "must have exactly one version marked as storage version", storage)
        accepted = {**names, "singular": names.get("singular") or plural,
                    "listKind": names.get("listKind") or f"{names['kind']}List"}
        old = obj.get("status") or {}
        stored = list(old.get("storedVersions") or [])
        if storage[0] not in stored:
            stored.append(storage[0])
        when = now_rfc3339()
        obj["status"] = {
            "acceptedNames": accepted, "storedVersions": stored,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": when},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": when},
            ],
        }

    @staticmethod
    def _requester(obj: JSON, req: Request) -> None:
        """A CSR records who asked, from the request's credentials, never from its body."""
        user = req.user or ADMIN
        spec = dict(obj.get("spec") or {})
        for field_name in ("username", "uid", "groups", "extra"):
            spec.pop(field_name, None)
        spec["username"] = user.name
        if user.uid:
            spec["uid"] = user.uid
        spec["groups"] = list(user.groups)
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra.items()}
        obj["spec"] = spec

    def _approve(self, rtype: ResourceType, key: Key, body: JSON) -> Response:
        """PUT .../approval: only the Approved/Denied conditions change, never the certificate."""
        with self.store.cond:
            old = self._existing(rtype, key)
            conditions = (body.get("status") or {}).get("conditions") or []
            kinds = {c.get("type") for c in conditions}
            if "Approved" in kinds and "Denied" in kinds:
                raise invalid(rtype.kind, rtype.plural, rtype.group, key[3], "status.conditions",
                              "Approved and Denied conditions are mutually exclusive")
            status = {**(old.get("status") or {}), "conditions": conditions}
            return self._update(rtype, key, {**old, "metadata": {**old["metadata"], **{
                k: v for k, v in (body.get("metadata") or {}).items() if k == "resourceVersion"}},
                "status": status}, True)

    def _update(self, rtype: ResourceType, key: Key, body: JSON, status_only: bool) -> Response:
        body = self._admit(rtype, body, key[3])
        with self.store.cond:
            old = self._existing(rtype, key)
            meta = dict(body.get("metadata") or {})
            if meta.get("name") not in (None, key[3]):
                raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the "
                                  f"URL ({key[3]})")
            if rtype.namespaced and meta.get("namespace") not in (None, "", key[2]):
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
            old_meta = old["metadata"]
            sent_rv = meta.get("resourceVersion")
            if not sent_rv and rtype.custom:
                raise invalid(rtype.kind, rtype.plural, rtype.group, key[3], "metadata.resourceVersion",
                              "must be specified for an update", value=0)
            if (sent_rv and sent_rv != old_meta["resourceVersion"]) or meta.get("uid") not in (None, old_meta["uid"]):
                raise conflict(rtype.plural, rtype.group, key[3])
            if status_only:
                new = {**old}
                if "status" in body:
                    new["status"] = body["status"]
                else:
                    new.pop("status", None)
            else:
                new = {**body, "apiVersion": rtype.api_version, "kind": rtype.kind}
                for keep in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                             "deletionGracePeriodSeconds", "generation"):
                    if keep in old_meta:
                        meta[keep] = old_meta[keep]
                    else:
                        meta.pop(keep, None)
                new["metadata"] = meta
                if rtype.status_subresource:
                    if "status" in old:
                        new["status"] = old["status"]
                    else:
                        new.pop("status", None)
                if rtype.plural == "namespaces" and not rtype.group:
                    self._defaults(rtype, new)
                elif rtype.plural == "customresourcedefinitions" and rtype.group == "apiextensions.k8s.io":
                    new["status"] = old.get("status", {})
                    self._crd_defaults(rtype, new)
            if _strip(old, rtype.status_subresource) != _strip(new, rtype.status_subresource):
                new["metadata"] = {**new["metadata"], "generation": int(old_meta.get("generation", 0)) + 1}
            if _same(old, new):
                return Response(200, present(old, rtype))
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                change = self.store.commit(key, None)  # the last finalizer is gone: delete, as the registry does
            else:
                change = self.store.commit(key, new)
            if rtype.plural == "customresourcedefinitions" and rtype.group == "apiextensions.k8s.io":
                if change.type == "DELETED":
                    self._drop_crd(key[3])
                else:
                    self.registry.set_crd(change.obj)
        return Response(200, present(change.obj, rtype))

    def _patch(self, rtype: ResourceType, route: Route, key: Key, req: Request) -> Response:
        ctype = req.content_type.split(";")[0].strip().lower()
        if ctype == APPLY_PATCH:
            patch: Any = self._apply_body(req)
        else:
            try:
                patch = json.loads(req.body or b"null")
            except ValueError as exc:
                raise bad_request(f"the body of the request could not be decoded as JSON: {exc}") from None
        with self.store.cond:
            old = self.store.get(key)
            if old is None and ctype == APPLY_PATCH and route.subresource is None:
                return self._create(rtype, Route(namespace=route.namespace), req,
                                    {**patch, "metadata": {**patch.get("metadata", {}), "name": key[3]}})
            old = self._existing(rtype, key)
            if ctype == JSON_PATCH:
                patched = json_patch(old, patch)
            elif ctype in (MERGE_PATCH, APPLY_PATCH):
                patched = merge_patch(old, patch)
            elif ctype == STRATEGIC_MERGE_PATCH and not rtype.custom:
                patched = strategic_merge_patch(old, patch)
            else:
                raise ApiError(415, f"the body of the request was in an unknown format - accepted media types "
                               f"include: {JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}"
                               + ("" if rtype.custom else f", {STRATEGIC_MERGE_PATCH}"), "UnsupportedMediaType")
            if not isinstance(patched, dict):
                raise bad_request("the patched object is not a JSON object")
            return self._update(rtype, key, patched, route.subresource == "status")

    @staticmethod
    def _apply_body(req: Request) -> JSON:
        if not req.query.get("fieldManager"):
            raise bad_request("PATCH requests with apply content type require fieldManager")
        try:
            body = json.loads(req.body)
        except ValueError:
            import yaml  # PyYAML is a project dependency; apply bodies may be YAML

            body = yaml.safe_load(req.body)
        if not isinstance(body, dict):
            raise bad_request("apply patch must be an object")
        return body

    def _delete(self, rtype: ResourceType, key: Key, options: JSON) -> Response:
        with self.store.cond:
            old = self._existing(rtype, key)
            pre = options.get("preconditions") or {}
            if pre.get("resourceVersion") not in (None, old["metadata"]["resourceVersion"]) \
                    or pre.get("uid") not in (None, old["metadata"].get("uid")):
                raise conflict(rtype.plural, rtype.group, key[3])
            is_namespace = rtype.plural == "namespaces" and not rtype.group
            if old["metadata"].get("finalizers") or is_namespace:
                if old["metadata"].get("deletionTimestamp"):
                    return Response(202, present(old, rtype))
                marked = {**old, "metadata": {**old["metadata"], "deletionTimestamp": now_rfc3339(),
                                              "deletionGracePeriodSeconds": 0}}
                if is_namespace:
                    marked["status"] = {**(old.get("status") or {}), "phase": "Terminating"}
                change = self.store.commit(key, marked)
                if not is_namespace:
                    return Response(202, present(change.obj, rtype))
                self._empty_namespace(key[3])
                if change.obj["metadata"].get("finalizers"):
                    return Response(200, present(change.obj, rtype))
            change = self.store.commit(key, None)
            if rtype.plural == "customresourcedefinitions" and rtype.group == "apiextensions.k8s.io":
                self._drop_crd(key[3])
        if rtype.return_deleted_object or is_namespace:
            return Response(200, present(change.obj, rtype))
        return Response(200, success_body({"name": key[3], "group": rtype.group, "kind": rtype.plural,
                                           "uid": old["metadata"].get("uid", "")}))

    def _empty_namespace(self, namespace: str) -> None:
        for key in self.store.keys():  # noqa: SIM118 - Store is not a dict and has no __iter__
            if key[2] == namespace and not (key[0] == "" and key[1] == "namespaces"):
                self.store.commit(key, None)

    def _drop_crd(self, name: str) -> None:
        for rtype in self.registry.remove_crd(name)[:1]:
            for key, _obj in self.store.items(rtype.group, rtype.plural):
                self.store.commit(key, None)

    def _delete_collection(self, rtype: ResourceType, route: Route, req: Request) -> Response:
        matches = self._matcher(rtype, req)
        for key, obj in self.store.items(rtype.group, rtype.plural, route.namespace):
            if matches(obj) and self.store.get(key) is not None:
                self._delete(rtype, key, {})
        return Response(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
