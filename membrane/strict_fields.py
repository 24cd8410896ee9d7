"""Strict field validation of the objects `membranectl apply` sends (pure).

Like the API server's strict decoding (`kubectl apply --validate=strict`): a field the
Kubernetes type does not have, or a value of the wrong JSON type, is an error naming the
field's path (`spec.ingress[0].form: unknown field`). A misspelled field must never be
dropped quietly: a NetworkPolicy rule whose `from` is misspelled would otherwise allow every
source. The structure comes from Kubernetes' own OpenAPI schemas, cut down to the kinds
membrane accepts (membrane/schemas/kubernetes-strict.json, see
membrane_testkit.strict_schema_gen), so fields membrane does not read (a container's image,
volumes, ...) are accepted exactly when Kubernetes would accept them.

Only what users hand in is checked this strictly; objects read back from the agent's own
store or streamed from an API server keep the lenient decoding of membrane.k8s_models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from membrane.k8s_models import PREFILTER_KINDS, FieldError
from membrane.labels import shown

_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_MAX_ERRORS = 20  # a file of garbage is named by its first problems, not thousands of lines


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    text = resources.files("membrane").joinpath("schemas", "kubernetes-strict.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]  # JSON of any shape, checked by the caller


def kubernetes_version() -> str:
    """The Kubernetes minor version whose types the check follows."""
    return str(_schema()["kubernetesVersion"])


def _key_path(path: str, key: str) -> str:
    if _SIMPLE_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(shown(key, quote=False))}]"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _fits(value: Any, allowed: Any) -> bool:
    if allowed is None:
        return True
    kinds = allowed if isinstance(allowed, list) else [allowed]
    actual = _json_type(value)
    return actual in kinds or (actual == "integer" and "number" in kinds)


def _expected(allowed: Any) -> str:
    kinds = [k for k in (allowed if isinstance(allowed, list) else [allowed]) if k != "null"]
    return " or ".join(kinds)


def _resolve(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    definitions = _schema()["definitions"]
    while "$ref" in schema:
        schema = definitions[schema["$ref"]]
    return schema


def _walk(value: Any, schema: Mapping[str, Any], path: str, errors: list[FieldError]) -> None:
    if len(errors) >= _MAX_ERRORS:
        return
    schema = _resolve(schema)
    if "oneOf" in schema:  # int-or-string, quantities
        choices = [_resolve(choice) for choice in schema["oneOf"]]
        if not any(_fits(value, choice.get("type")) for choice in choices):
            wanted = " or ".join(_expected(choice.get("type")) for choice in choices)
            errors.append(FieldError(path, f"expected {wanted}, got {_json_type(value)}"))
        return
    if not _fits(value, schema.get("type")):
        errors.append(FieldError(path, f"expected {_expected(schema.get('type'))}, got {_json_type(value)}"))
        return
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            where = _key_path(path, str(key))
            if properties is not None and key in properties:
                _walk(sub, properties[key], where, errors)
            elif isinstance(extra, Mapping):  # a map (labels, annotations, resources)
                _walk(sub, extra, where, errors)
            elif extra is False:
                errors.append(FieldError(where, "unknown field"))
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(FieldError(_key_path(path, key), "required field missing"))
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _walk(item, schema["items"], f"{path}[{index}]", errors)


def strict_errors(data: Mapping[str, Any]) -> list[FieldError]:
    """Unknown fields, wrong JSON types and missing required fields of an object, each with
    its path; empty when the object decodes strictly. Objects of a kind or apiVersion membrane
    does not accept are left to membrane.k8s_models.parse_object to name."""
    api_version, kind = data.get("apiVersion"), data.get("kind")
    if kind in PREFILTER_KINDS:  # membrane.io's own: the schema their CRD carries
        from membrane.prefilter_checking import object_errors

        return object_errors(data, strict=True)
    kinds: dict[str, str] = _schema()["kinds"]
    roots = [root for gvk, root in kinds.items() if gvk.rpartition("/")[2] == kind
             and (api_version is None or gvk == f"{api_version}/{kind}")]
    if len(roots) != 1:
        return []
    root = roots[0]
    errors: list[FieldError] = []
    _walk(data, {"$ref": root}, "", errors)
    return errors
