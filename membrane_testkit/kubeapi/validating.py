"""Schema validation of writes against the real OpenAPI schemas of one Kubernetes minor version.

The schemas are the JSON Schema conversions of Kubernetes' own OpenAPI documents that the
`kubernetes-validate` package ships (the `-strict` variants: `additionalProperties: false`
everywhere, which is what the API server's strict decoder enforces). What a real API server
does with a write, and so what the stand-in does:

- an unknown field (one the version's Go type does not have, e.g. NetworkPolicy `status` from
  1.28 on) follows `fieldValidation`: `Strict` refuses the request (400 BadRequest, "strict
  decoding error: unknown field ..."), `Warn` (the default since 1.27) drops the field and
  answers with a `Warning: 299` header, `Ignore` drops it silently;
- a value of the wrong JSON type cannot be decoded: 400 BadRequest naming the field;
- a required field that is missing: 422 Invalid naming the field.

Semantic validation beyond the schema (port ranges, CIDR syntax, label syntax) is not modelled.

Custom resources are checked against the `openAPIV3Schema` of their CRD (`admit_custom`), as a
real server does: unknown fields pruned (with a warning) or, under `Strict`, refused; every
schema violation 422 Invalid naming the field. The CEL rules (`x-kubernetes-validations`) are
evaluated through their Python equivalents where membrane has one (its own CRDs:
membrane/prefilter_objects.RULE_CHECKS); other CRDs' rules are not evaluated.
"""

from __future__ import annotations

import json
import re
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources as importlib_resources
from typing import Any

from .statuses import ApiError, bad_request

JSON = dict[str, Any]

FIELD_VALIDATION_MODES = ("Ignore", "Warn", "Strict")
DEFAULT_FIELD_VALIDATION = "Warn"
_VERSION_DIR = re.compile(r"^v(\d+)\.(\d+)\.\d+-local-strict$")


def _schema_root() -> Any:
    return importlib_resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")


@lru_cache(maxsize=1)
def supported_versions() -> tuple[str, ...]:
    """The minor versions (`1.26`, ...) whose schemas are installed, oldest first."""
    found = []
    for entry in _schema_root().iterdir():
        match = _VERSION_DIR.match(entry.name)
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return tuple(f"{major}.{minor}" for major, minor in sorted(found))


def minor_of(version: str) -> tuple[int, int]:
    """`"1.28"` or `"v1.28.3"` -> (1, 28); ValueError for anything else."""
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.\d+)?$", version.strip())
    if not match:
        raise ValueError(f"not a Kubernetes version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def check_version(version: str) -> str:
    """The `major.minor` form of a version whose schemas are installed; ValueError otherwise."""
    major, minor = minor_of(version)
    text = f"{major}.{minor}"
    if text not in supported_versions():
        raise ValueError(f"no schemas for Kubernetes {text} (installed: {', '.join(supported_versions())})")
    return text


def _schema_file_name(api_version: str, kind: str) -> str:
    # kubernetes-validate's naming: `networking.k8s.io/v1` -> `networking-v1`, core `v1` -> `v1`.
    group, _, version = api_version.rpartition("/")
    short = f"{group.split('.')[0]}-{version}" if group else version
    return f"{kind.lower()}-{short}.json"


def field_path(parts: Any) -> str:
    """`spec.ingress[0].from[1]` from a jsonschema path."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Problems:
    """What validating one object found."""

    unknown: list[tuple[Any, ...]] = field(default_factory=list)  # paths of unknown fields
    undecodable: list[tuple[str, str]] = field(default_factory=list)  # (path, detail): 400
    invalid: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail): 422


class SchemaBook:
    """The schemas of one Kubernetes minor version, with one compiled validator per kind."""

    def __init__(self, version: str) -> None:
        self.version = check_version(version)
        self._dir = _schema_root().joinpath(f"v{self.version}.0-local-strict")
        self._lock = threading.Lock()
        self._validators: dict[tuple[str, str], Any] = {}
        self._registry: Any = None

    def _validator(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        with self._lock:
            if key in self._validators:
                return self._validators[key]
            import jsonschema  # kubernetes-validate's dependency; loaded only when validating
            from referencing import Registry, Resource

            if self._registry is None:
                definitions = json.loads(self._dir.joinpath("_definitions.json").read_text())
                self._registry = Resource.from_contents(definitions) @ Registry()
            path = self._dir.joinpath(_schema_file_name(api_version, kind))
            validator = None
            if path.is_file():
                schema = json.loads(path.read_text())
                registry = Resource.from_contents(schema) @ self._registry
                validator = jsonschema.Draft202012Validator(schema, registry=registry)
            self._validators[key] = validator
            return validator

    def check(self, obj: JSON) -> Problems:
        """Validate one whole object (apiVersion and kind set)."""
        problems = Problems()
        validator = self._validator(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if validator is None:
            return problems
        for error in validator.iter_errors(obj):
            self._classify(error, problems)
        return problems

    def _classify(self, error: Any, problems: Problems) -> None:
        path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and error.validator_value is False \
                and isinstance(error.instance, dict):
            known = set((error.schema or {}).get("properties") or {})
            problems.unknown.extend(path + (name,) for name in error.instance if name not in known)
        elif error.validator == "required" and isinstance(error.instance, dict):
            for name in error.validator_value:
                if name not in error.instance:
                    problems.invalid.append((field_path(path + (name,)), "FieldValueRequired", "Required value"))
        elif error.validator in ("type", "oneOf", "anyOf"):
            problems.undecodable.append((field_path(path), f"cannot unmarshal {_json_type(error.instance)} "
                                                           f"into a field of type {_expected(error)}"))
        else:
            problems.invalid.append((field_path(path), "FieldValueInvalid", error.message))


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _expected(error: Any) -> str:
    if error.validator == "type":
        types = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        return "/".join(t for t in types if t != "null") or "null"
    return "int-or-string" if error.validator == "oneOf" else "any of several"


def _drop(obj: Any, path: tuple[Any, ...]) -> None:
    for part in path[:-1]:
        try:
            obj = obj[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(obj, dict):
        obj.pop(path[-1], None)


@cache
def schema_book(version: str) -> SchemaBook:
    """One shared `SchemaBook` per minor version (validators are reused across servers)."""
    return SchemaBook(version)


def parse_mode(value: str | None) -> str:
    """The `fieldValidation` query parameter; 400 for anything but Ignore, Warn or Strict."""
    if value in (None, ""):
        return DEFAULT_FIELD_VALIDATION
    if value not in FIELD_VALIDATION_MODES:
        raise bad_request(f'fieldValidation must be one of "Ignore", "Warn" or "Strict", not {value!r}')
    return value


def admit(book: SchemaBook, obj: JSON, mode: str, name: str, plural: str, group: str) -> tuple[JSON, list[str]]:
    """The object as the server would store it (unknown fields dropped) and the warnings to send;
    raises the ApiError a real server answers when it refuses the write."""
    problems = book.check(obj)
    kind = str(obj.get("kind", ""))
    version = str(obj.get("apiVersion", "")).rpartition("/")[2]
    decode_prefix = f'{kind} in version "{version}" cannot be handled as a {kind}: '
    if problems.undecodable:
        path, detail = problems.undecodable[0]
        raise bad_request(f"{decode_prefix}json: {detail} ({path or 'object'})")
    unknown = [f'unknown field "{field_path(p)}"' for p in problems.unknown]
    if unknown and mode == "Strict":
        raise bad_request(decode_prefix + "strict decoding error: " + ", ".join(unknown))
    if problems.invalid:
        raise _invalid(kind, plural, group, name, problems.invalid)
    if not problems.unknown:
        return obj, []
    pruned = json.loads(json.dumps(obj))
    for unknown_path in sorted(problems.unknown, key=len, reverse=True):
        _drop(pruned, unknown_path)
    return pruned, unknown if mode == "Warn" else []


def _invalid(kind: str, plural: str, group: str, name: str, found: list[tuple[str, str, str]]) -> ApiError:
    texts = [f"{path}: {detail}" for path, _reason, detail in found]
    subject = f"{kind}.{group}" if group else kind
    listed = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    causes = [{"reason": reason, "message": detail, "field": path} for path, reason, detail in found]
    details: JSON = {"name": name, "kind": kind, "causes": causes}
    if group:
        details["group"] = group
    return ApiError(422, f'{subject} "{name}" is invalid: {listed}', "Invalid", details)


@dataclass
class WriteContext:
    """Per request: the `fieldValidation` mode and the warnings collected for the answer."""

    mode: str = DEFAULT_FIELD_VALIDATION
    warnings: list[str] = field(default_factory=list)


# Set by the request dispatcher around each request; the write verbs read it.
CURRENT_WRITE: ContextVar[WriteContext | None] = ContextVar("kubeapi_write", default=None)


def warning_header(warnings: list[str]) -> str:
    """RFC 7234 `Warning` values as kube-apiserver sends them (code 299, agent `-`)."""
    quoted = ['299 - "' + w.replace("\\", "\\\\").replace('"', '\\"') + '"' for w in warnings]
    return ", ".join(quoted)


_REASONS = (("Required value", "FieldValueRequired"), ("Unsupported value", "FieldValueNotSupported"),
            ("Too many", "FieldValueTooMany"), ("Duplicate value", "FieldValueDuplicate"))


def _custom_checker(schema: JSON) -> Any:
    from membrane.prefilter_objects import PATTERN_NAMES, RULE_CHECKS, RULE_FIELDS
    from membrane.schema_checking import SchemaChecker, rule_texts

    # A rule membrane has no Python equivalent for is not evaluated (the stand-in has no CEL).
    rules = {text: RULE_CHECKS.get(text, lambda _value: True) for text in rule_texts(schema)}
    return SchemaChecker(schema, rules, PATTERN_NAMES, RULE_FIELDS)


def admit_custom(schema: JSON, obj: JSON, mode: str, name: str, plural: str, group: str) -> tuple[JSON, list[str]]:
    """A custom resource as the server keeps it (unknown fields pruned) and the warnings; raises
    the ApiError a real server answers for a schema violation or, under Strict, an unknown field."""
    from membrane.schema_checking import pruned

    dropped: list[str] = []
    kept = pruned(obj, schema, "", dropped)
    unknown = [f'unknown field "{path}"' for path in dropped]
    kind = str(obj.get("kind", ""))
    if unknown and mode == "Strict":
        version = str(obj.get("apiVersion", "")).rpartition("/")[2]
        raise bad_request(f'{kind} in version "{version}" cannot be handled as a {kind}: strict decoding error: '
                          + ", ".join(unknown))
    errors = _custom_checker(schema).errors(kept, strict=False)
    if errors:
        found = [(e.path, next((r for prefix, r in _REASONS if e.reason.startswith(prefix)), "FieldValueInvalid"),
                  e.reason) for e in errors]
        raise _invalid(kind, plural, group, name, found)
    return kept, unknown if mode == "Warn" else []
