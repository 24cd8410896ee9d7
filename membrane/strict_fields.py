"""Strict field validation of the objects `membranectl apply` sends (pure).

Like the API server's strict decoding (`kubectl apply --validate=strict`): a field the
Kubernetes type does not have, or a value of the wrong JSON type, is an error naming the
field's path (`spec.ingress[0].form: unknown field`). A misspelled field must never be
dropped quietly: a NetworkPolicy rule whose `from` is misspelled would otherwise allow every
source. The structure comes from Kubernetes' own OpenAPI schemas, cut down to the kinds
membrane accepts (membrane/schemas/kubernetes-strict.json, see
membrane_testkit.strict_schema_gen), so fields membrane does not read (a container's image,
volumes, ...) are accepted exactly when Kubernetes would accept them.

The walk is membrane.schema_checking's (the one that checks membrane's own CRDs), in its
`DECODING` dialect. Only what users hand in is checked this strictly; objects read back from the agent's own
store or streamed from an API server keep the lenient decoding of membrane.k8s_models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from membrane.k8s_models import PREFILTER_KINDS, FieldError
from membrane.schema_checking import DECODING, SchemaChecker


@lru_cache(maxsize=1)
def _schema() -> dict[str, Any]:
    text = resources.files("membrane").joinpath("schemas", "kubernetes-strict.json").read_text()
    return json.loads(text)  # type: ignore[no-any-return]  # JSON of any shape, checked by the caller


def kubernetes_version() -> str:
    """The Kubernetes minor version whose types the check follows."""
    return str(_schema()["kubernetesVersion"])


@lru_cache(maxsize=16)
def _checker(root: str) -> SchemaChecker:
    return SchemaChecker({"$ref": root}, definitions=_schema()["definitions"], dialect=DECODING)


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
    return _checker(roots[0]).errors(data)
