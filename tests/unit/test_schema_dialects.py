"""One schema walk (membrane/schema_checking.py), two dialects: a CRD's structural schema and
Kubernetes' types as strict JSON Schema (what membrane.strict_fields checks `membranectl apply`
against). The dialect decides what a schema's silence means and how an error is worded; the
walk is the same."""

from __future__ import annotations

from typing import Any

import pytest

from membrane.schema_checking import CRD, DECODING, SchemaChecker

DEFINITIONS: dict[str, Any] = {
    "Port": {"oneOf": [{"type": ["string", "null"]}, {"type": ["integer", "null"]}]},
    "Rule": {"type": ["object", "null"], "additionalProperties": False, "required": ["port"],
             "properties": {"port": {"$ref": "Port"}, "note": {"type": ["string", "null"]}}},
    "Free": {"type": ["object", "null"]},  # JSON Schema: no additionalProperties, anything goes
    "Root": {"type": "object", "additionalProperties": False,
             "properties": {"rules": {"type": ["array", "null"], "items": {"$ref": "Rule"}},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "free": {"$ref": "Free"}}},
}


def decoding(value: Any) -> list[str]:
    checker = SchemaChecker({"$ref": "Root"}, definitions=DEFINITIONS, dialect=DECODING)
    return [str(e) for e in checker.errors(value)]


@pytest.mark.parametrize(("value", "expected"), [
    ({"rules": [{"port": 80}, {"port": "http", "note": None}]}, []),
    ({"rules": [{"port": [80]}]}, ["rules[0].port: expected string or integer, got array"]),
    ({"rules": [{"prot": 80}]}, ["rules[0].prot: unknown field", "rules[0].port: required field missing"]),
    ({"labels": {"a": 1}}, ["labels.a: expected string, got integer"]),
    ({"free": {"anything": {"at": ["all"]}}}, []),
    ({"rules": {}}, ["rules: expected array, got object"]),
    ({"extra": 1}, ["extra: unknown field"]),
])
def test_decoding_dialect_follows_refs_and_json_schema_silence(value: Any, expected: list[str]) -> None:
    assert decoding(value) == expected


def test_crd_dialect_closes_objects_by_default_and_words_errors_as_the_api_server() -> None:
    schema = {"type": "object", "properties": {
        "metadata": {"type": "object"},
        "spec": {"type": "object", "required": ["port"], "properties": {
            "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]}}}}}
    checker = SchemaChecker(schema, dialect=CRD)
    assert [str(e) for e in checker.errors({"metadata": {"name": "x", "labels": {}}, "spec": {"port": 1, "p": 2}})] \
        == ["spec.p: unknown field"]  # metadata is the server's own; spec is closed without saying so
    assert [str(e) for e in checker.errors({"spec": {"port": [1]}})] == \
        ["spec.port: must be of type integer or string, got array"]
    assert [str(e) for e in checker.errors({"spec": {}})] == ["spec.port: Required value"]
    assert checker.errors({"spec": {"port": 1, "p": 2}}, strict=False) == []  # pruned by the server instead


def test_a_long_key_is_named_not_echoed_in_either_dialect() -> None:
    key = "k" * 5000 + "/"
    for dialect in (CRD, DECODING):
        checker = SchemaChecker({"type": "object", "additionalProperties": False}, dialect=dialect)
        [error] = checker.errors({key: 1})
        assert "(5001 characters)" in str(error) and len(str(error)) < 200
