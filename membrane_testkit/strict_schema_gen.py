"""Generates membrane/schemas/kubernetes-strict.json: the structure of the kinds `membranectl
apply` accepts, cut from Kubernetes' own OpenAPI schemas (the strict JSON Schema conversion
that the `kubernetes-validate` test dependency ships).

Kept per definition: what strict decoding needs (properties, additionalProperties, items,
type, required, enum, oneOf, $ref); descriptions and Kubernetes extensions are dropped, and
only definitions the kinds reach are kept. Run `python -m membrane_testkit.strict_schema_gen`
after changing KUBERNETES_VERSION; a unit test checks the file is what this produces.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

KUBERNETES_VERSION = "1.37"
KINDS = {"v1/Namespace": "io.k8s.api.core.v1.Namespace", "v1/Node": "io.k8s.api.core.v1.Node",
         "v1/Pod": "io.k8s.api.core.v1.Pod",
         "networking.k8s.io/v1/NetworkPolicy": "io.k8s.api.networking.v1.NetworkPolicy",
         "v1/Service": "io.k8s.api.core.v1.Service",
         "discovery.k8s.io/v1/EndpointSlice": "io.k8s.api.discovery.v1.EndpointSlice"}
KEEP = ("type", "properties", "additionalProperties", "items", "required", "enum", "oneOf", "$ref")
TARGET = Path(__file__).resolve().parents[1] / "membrane" / "schemas" / "kubernetes-strict.json"


def _definitions(version: str) -> dict[str, Any]:
    root = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema", f"v{version}.0-local-strict")
    return json.loads(root.joinpath("_definitions.json").read_text())["$defs"]  # type: ignore[no-any-return]  # the schema file's definitions object


def _slim(schema: Any, reached: list[str]) -> Any:
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key in KEEP:
        if key not in schema:
            continue
        value = schema[key]
        if key == "$ref":
            name = value.rsplit("/", 1)[-1]
            reached.append(name)
            out[key] = name
        elif key == "properties":
            out[key] = {prop: _slim(sub, reached) for prop, sub in sorted(value.items())}
        elif key in ("items", "additionalProperties"):
            out[key] = _slim(value, reached)
        elif key == "oneOf":
            out[key] = [_slim(sub, reached) for sub in value]
        else:
            out[key] = value
    return out


def generate(version: str = KUBERNETES_VERSION) -> dict[str, Any]:
    source = _definitions(version)
    defs: dict[str, Any] = {}
    pending = list(KINDS.values())
    while pending:
        name = pending.pop()
        if name in defs:
            continue
        reached: list[str] = []
        defs[name] = _slim(source[name], reached)
        pending.extend(reached)
    return {"kubernetesVersion": version, "kinds": KINDS, "definitions": dict(sorted(defs.items()))}


def render(version: str = KUBERNETES_VERSION) -> str:
    return json.dumps(generate(version), sort_keys=False, separators=(",", ":")) + "\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET} ({TARGET.stat().st_size} bytes)")
