"""Validation of an object against a CRD's OpenAPI v3 schema, as kube-apiserver does it (pure).

membrane's own custom resources are defined once, as the structural schema their
CustomResourceDefinition carries (membrane/prefilter_objects.py). A real API server refuses an
invalid write with that schema; the operator (objects written before a schema tightened, or
an API server without validation rules), the agent's local store (`membranectl apply -f` on a
standalone node) and the API stand-in check the same schema here, so an object is accepted or
refused the same way everywhere, with the same field path.

What is checked: `type` (and `nullable`), `properties` with `required`, unknown fields (an
error when `strict`, as `fieldValidation=Strict` makes it; ignored otherwise, since the API
server prunes them), `items`, `enum`, `minimum`/`maximum`, `minLength`/`maxLength`, `pattern`,
`minItems`/`maxItems`, `x-kubernetes-list-type` `set`/`map` (duplicates), the int-or-string
form (`x-kubernetes-int-or-string` with `anyOf`), and `x-kubernetes-validations`: the CEL rules
cannot be evaluated here, so each rule text must have a Python equivalent in the `rules`
table given (a rule without one is a programming error, raised at once, never skipped).

The same walk checks the built-in kinds `membranectl apply` accepts (membrane.strict_fields)
against Kubernetes' own OpenAPI schemas converted to strict JSON Schema, in the `DECODING`
dialect: `$ref`s resolved through `definitions`, `oneOf` for int-or-string, nullable types
as `["string", "null"]`, only `additionalProperties: false` closing an object, and errors
worded as the API server's strict decoding words them. One walk, two dialects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from membrane.k8s_models import FieldError
from membrane.labels import shown

Schema = Mapping[str, Any]
# A CEL rule's Python equivalent: True when `self` (the value at the rule's node) passes.
RuleCheck = Callable[[Any], bool]
MAX_ERRORS = 20  # a file of garbage is named by its first problems, not thousands of lines


class UnknownRule(LookupError):
    """A schema carries a validation rule that has no Python equivalent."""


@dataclass(frozen=True)
class Dialect:
    """How a schema's silences read, and how errors are worded."""

    # An object schema without `additionalProperties` admits no other keys (a CRD's structural
    # schema); else only `additionalProperties: false` closes it (JSON Schema).
    closed_objects: bool
    # The root's `metadata` is the API server's own, checked apart (CRDs say only `type: object`).
    server_metadata: bool
    type_error: str  # .format(wanted=..., got=...)
    required: str


# A CustomResourceDefinition's OpenAPI v3 schema, worded as kube-apiserver's CRD validation.
CRD = Dialect(True, True, "must be of type {wanted}, got {got}", "Required value")
# Kubernetes' built-in types as strict JSON Schema (membrane/schemas/kubernetes-strict.json),
# worded as strict decoding errors.
DECODING = Dialect(False, False, "expected {wanted}, got {got}", "required field missing")


@dataclass(frozen=True)
class SchemaChecker:
    """Checks objects against one schema. `rules` maps each CEL rule text to its Python
    equivalent; `pattern_names` says in words what a pattern accepts (for the error);
    `rule_fields` names the field a rule's error is about, below the rule's node (what a
    rule's `fieldPath` says on Kubernetes 1.28+, which 1.26 does not take)."""

    schema: Schema
    rules: Mapping[str, RuleCheck] = field(default_factory=dict)
    pattern_names: Mapping[str, str] = field(default_factory=dict)
    rule_fields: Mapping[str, str] = field(default_factory=dict)
    definitions: Mapping[str, Schema] = field(default_factory=dict)  # what `$ref`s name
    dialect: Dialect = CRD

    def __post_init__(self) -> None:
        missing = sorted(set(rule_texts(self.schema)) - set(self.rules))
        if missing:
            raise UnknownRule(f"validation rules without a Python equivalent: {missing}")

    def errors(self, value: Any, strict: bool = True, path: str = "") -> list[FieldError]:
        found: list[FieldError] = []
        self._walk(value, self.schema, path, strict, found)
        return found[:MAX_ERRORS]

    # --- the walk -------------------------------------------------------------------------------
    def _walk(self, value: Any, schema: Schema, path: str, strict: bool, out: list[FieldError]) -> None:
        if len(out) >= MAX_ERRORS:
            return
        schema = self._resolved(schema)
        if value is None and schema.get("nullable"):
            return
        if schema.get("x-kubernetes-int-or-string") or "oneOf" in schema:
            choices = [self._resolved(c) for c in schema.get("anyOf") or schema.get("oneOf") or []]
            if not self._one_of_choices(value, choices, path, strict, out):
                return
        elif not _type_fits(value, schema.get("type")):
            out.append(FieldError(path, self._type_error(schema.get("type"), value)))
            return
        before = len(out)
        self._values(value, schema, path, out)
        if isinstance(value, dict):
            self._object(value, schema, path, strict, out)
        elif isinstance(value, list):
            self._array(value, schema, path, strict, out)
        if len(out) == before:  # rules see only values the schema already accepts (as CEL does)
            for rule in schema.get("x-kubernetes-validations") or []:
                if not self.rules[rule["rule"]](value):
                    below = self.rule_fields.get(rule["rule"])
                    where = (f"{path}.{below}" if path else below) if below else path
                    out.append(FieldError(where, str(rule.get("message") or f"failed rule: {rule['rule']}")))

    def _one_of_choices(self, value: Any, choices: list[Schema], path: str, strict: bool,
                        out: list[FieldError]) -> bool:
        fitting = [c for c in choices if _type_fits(value, c.get("type"))]
        if not fitting:
            out.append(FieldError(path, self._type_error([c.get("type") for c in choices], value)))
            return False
        self._walk(value, fitting[0], path, strict, out)
        return True

    def _values(self, value: Any, schema: Schema, path: str, out: list[FieldError]) -> None:
        if "enum" in schema and value not in schema["enum"]:
            supported = ", ".join(json.dumps(v) for v in schema["enum"])
            out.append(FieldError(path, f"Unsupported value: {_shown(value)}: supported values: {supported}"))
            return
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                out.append(FieldError(path, f"should be greater than or equal to {schema['minimum']}"))
            if "maximum" in schema and value > schema["maximum"]:
                out.append(FieldError(path, f"should be less than or equal to {schema['maximum']}"))
        if isinstance(value, str):
            if "minLength" in schema and len(value) < schema["minLength"]:
                out.append(FieldError(path, f"should be at least {schema['minLength']} chars long"))
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                out.append(FieldError(path, f"may not be more than {schema['maxLength']} chars long"))
            elif "pattern" in schema and not _compiled(schema["pattern"]).search(value):
                what = self.pattern_names.get(schema["pattern"])
                reason = f"must be {what}" if what else f"should match '{schema['pattern']}'"
                out.append(FieldError(path, f"Invalid value: {_shown(value)}: {reason}"))

    def _object(self, value: dict[str, Any], schema: Schema, path: str, strict: bool,
                out: list[FieldError]) -> None:
        properties: Mapping[str, Schema] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            where = _key_path(path, str(key))
            if key in properties:
                self._walk(sub, properties[key], where, strict, out)
            elif isinstance(extra, Mapping):
                self._walk(sub, extra, where, strict, out)
            elif strict and self._closed(schema, path):
                out.append(FieldError(where, "unknown field"))
        for key in schema.get("required") or ():
            if key not in value:
                out.append(FieldError(_key_path(path, key), self.dialect.required))

    def _closed(self, schema: Schema, path: str) -> bool:
        """Whether a key the schema does not declare is unknown (else: accepted as it is)."""
        if schema.get("additionalProperties") is False:
            return True
        if not self.dialect.closed_objects or schema.get("x-kubernetes-preserve-unknown-fields"):
            return False
        return not (self.dialect.server_metadata and path == "metadata")

    def _resolved(self, schema: Schema) -> Schema:
        while "$ref" in schema:
            schema = self.definitions[schema["$ref"]]
        return schema

    def _type_error(self, wanted: Any, value: Any) -> str:
        return self.dialect.type_error.format(wanted=_wanted(wanted), got=json_type(value))

    def _array(self, value: list[Any], schema: Schema, path: str, strict: bool, out: list[FieldError]) -> None:
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append(FieldError(path, f"should have at least {schema['minItems']} items"))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append(FieldError(path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
            return  # as kube-apiserver: the items of a list too long are not looked at
        items = schema.get("items")
        if isinstance(items, Mapping) and _plain_string(items):
            # Long lists of strings (a deny list's 20,000 prefixes): one tight loop; an item
            # that fails takes the full walk, which says why.
            pattern = _compiled(items["pattern"]) if "pattern" in items else None
            low, high = items.get("minLength", 0), items.get("maxLength", float("inf"))
            for index, item in enumerate(value):
                if not (isinstance(item, str) and low <= len(item) <= high
                        and (pattern is None or pattern.search(item))):
                    self._walk(item, items, f"{path}[{index}]", strict, out)
        elif isinstance(items, Mapping):
            for index, item in enumerate(value):
                self._walk(item, items, f"{path}[{index}]", strict, out)
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            _duplicates(value, path, lambda item: item, out)
        elif list_type == "map":
            keys = tuple(schema.get("x-kubernetes-list-map-keys") or ())
            _duplicates(value, path, lambda item: tuple((item or {}).get(k) for k in keys)
                        if isinstance(item, dict) else None, out, keys)


def pruned(value: Any, schema: Schema, path: str = "", dropped: list[str] | None = None) -> Any:
    """`value` as the API server stores it: fields the schema does not declare dropped (their
    paths appended to `dropped`), as structural pruning does; metadata is left to the server."""
    if isinstance(value, dict) and path != "metadata" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        properties: Mapping[str, Schema] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out = {}
        for key, sub in value.items():
            where = _key_path(path, str(key))
            if key in properties:
                out[key] = pruned(sub, properties[key], where, dropped)
            elif isinstance(extra, Mapping):
                out[key] = pruned(sub, extra, where, dropped)
            elif dropped is not None:
                dropped.append(where)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [pruned(item, schema["items"], f"{path}[{index}]", dropped) for index, item in enumerate(value)]
    return value


def rule_texts(schema: Any) -> list[str]:
    """Every CEL rule text in a schema, in document order."""
    found: list[str] = []
    if isinstance(schema, Mapping):
        found.extend(str(r["rule"]) for r in schema.get("x-kubernetes-validations") or [])
        for key, sub in schema.items():
            if key != "x-kubernetes-validations":
                found.extend(rule_texts(sub))
    elif isinstance(schema, list):
        for sub in schema:
            found.extend(rule_texts(sub))
    return found


def _duplicates(value: list[Any], path: str, key_of: Callable[[Any], Any], out: list[FieldError],
                keys: tuple[str, ...] = ()) -> None:
    seen: set[Any] = set()
    for index, item in enumerate(value):
        key = key_of(item)
        if key is None:
            continue
        # Strings and numbers are their own key (a 20,000-item set is checked in milliseconds).
        text = key if isinstance(key, str) else json.dumps(key, sort_keys=True)
        if text in seen:
            shown = ", ".join(f"{k}: {_shown(v)}" for k, v in zip(keys, key, strict=True)) if keys else _shown(item)
            out.append(FieldError(f"{path}[{index}]", f"Duplicate value: {shown}"))
        seen.add(text)


_PLAIN_STRING_KEYS = frozenset({"type", "minLength", "maxLength", "pattern", "description"})


def _plain_string(schema: Schema) -> bool:
    """A string schema with length and pattern checks only (no enum, rules or format)."""
    return schema.get("type") == "string" and _PLAIN_STRING_KEYS.issuperset(schema)


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _key_path(path: str, key: str) -> str:
    if _SIMPLE_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(shown(key, quote=False))}]"


def _shown(value: Any) -> str:
    """A value in an error, cut short: never echo a whole file back."""
    text = json.dumps(value) if not isinstance(value, (dict, list)) else json_type(value)
    return text if len(text) <= 80 else text[:77] + "..."


def json_type(value: Any) -> str:
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


def _types(wanted: Any) -> list[str]:
    """A schema's `type` (one name, or a list: JSON Schema's nullable form) as a list."""
    return [str(t) for t in (wanted if isinstance(wanted, list) else [wanted]) if t is not None]


def _type_fits(value: Any, wanted: Any) -> bool:
    if wanted is None:
        return True
    kinds = _types(wanted)
    actual = json_type(value)
    return actual in kinds or (actual == "integer" and "number" in kinds)


def _wanted(wanted: Any) -> str:
    """`integer or string`: the types a value may have (choices flattened; null not named)."""
    kinds = [k for w in (wanted if isinstance(wanted, list) else [wanted]) for k in _types(w)]
    return " or ".join(k for k in kinds if k != "null")
