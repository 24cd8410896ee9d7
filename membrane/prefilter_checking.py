"""Whether a PacketFilter or CIDRDenyList is accepted, and why not (pure).

One verdict for every path an object takes: `membranectl apply -f` (the agent's local store,
strict: unknown fields are errors as with `kubectl apply --validate=strict`), the operator
(objects read back from the API server: unknown fields were pruned there) and the API stand-in.

1. the CRD's schema and its CEL rules (membrane/schema_checking.py; what a real API server
   refuses at admission, so there nothing changes);
2. the metadata the API server checks itself (a DNS-subdomain name, no namespace);
3. what no schema on Kubernetes 1.26 can say: a CIDR with host bits set (`10.1.2.3/8` is
   refused, never widened to `10.0.0.0/8`: a deny rule must not drop more than was written)
   and what else the datapath's rule model refuses (membrane/prefilter_converting.py: payload
   value bits outside the mask; the rest the CEL rules already refuse at admission).
   An object that fails only these passes a real API server; the operator then reports it on
   the object (`Accepted=False` naming the field and the reason) and streams it to no node, so
   its earlier rules stop being enforced (the spec the API stores is the only one there is).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from membrane.k8s_models import FieldError, ObjectValidationError
from membrane.prefilter_converting import RuleConversionError, spec_rules
from membrane.prefilter_objects import API_VERSION, CHECKERS, NAME_PATTERN, PACKET_FILTER, PrefilterObject, cidr_parts

_LABEL = re.compile(NAME_PATTERN)


def object_errors(data: Mapping[str, Any], strict: bool = True) -> list[FieldError]:
    """Every reason `data` is refused, each with its field path; empty: accepted."""
    kind = str(data.get("kind", ""))
    errors = list(CHECKERS[kind].errors(dict(data), strict=strict))
    if data.get("apiVersion", API_VERSION) != API_VERSION:
        errors.insert(0, FieldError("apiVersion", f"{kind} must be {API_VERSION!r}, "
                                                  f"got {str(data.get('apiVersion'))[:64]!r}"))
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        errors.append(FieldError("metadata.name", "Required value"))
    elif len(name) > 253 or not all(_LABEL.match(part) and len(part) <= 63 for part in name.split(".")):
        errors.append(FieldError("metadata.name", "must be a DNS subdomain (lower-case letters, digits, '-' "
                                                  "and '.', at most 253 characters)"))
    if isinstance(meta, Mapping) and meta.get("namespace"):
        errors.append(FieldError("metadata.namespace", f"{kind} is cluster-scoped: no namespace"))
    if not errors:
        errors.extend(_beyond_schema(kind, str(name), data["spec"]))
    return errors


def _host_bits(text: str, path: str) -> FieldError | None:
    address, length = cidr_parts(text)
    mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
    if not address & ~mask:
        return None
    prefix = ipaddress.IPv4Network((address & mask, length))
    return FieldError(path, f"Invalid value: {text!r}: host bits set (the prefix is {prefix}: write that, "
                            f"or {text.partition('/')[0]}/32 for the one address)")


def _beyond_schema(kind: str, name: str, spec: Mapping[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    if kind != PACKET_FILTER:
        for index, cidr in enumerate(spec.get("cidrs") or []):
            found = _host_bits(cidr, f"spec.cidrs[{index}]")
            if found is not None:
                errors.append(found)
        return errors
    for index, rule in enumerate(spec.get("rules") or []):
        for side in ("source", "destination"):
            found = _host_bits(rule[side], f"spec.rules[{index}].{side}") if side in rule else None
            if found is not None:
                errors.append(found)
    if not errors:
        try:
            spec_rules(name, spec)
        except RuleConversionError as exc:
            errors.append(FieldError(exc.field, exc.reason))
    return errors


def parse_prefilter_object(data: Mapping[str, Any], strict: bool = False) -> PrefilterObject:
    """The accepted object; ObjectValidationError naming each field and reason otherwise."""
    kind = str(data.get("kind", ""))
    meta = data.get("metadata")
    name = str(meta.get("name", "")) if isinstance(meta, Mapping) else ""
    errors = object_errors(data, strict=strict)
    if errors:
        raise ObjectValidationError(kind, name, errors)
    return PrefilterObject.model_validate(dict(data))
