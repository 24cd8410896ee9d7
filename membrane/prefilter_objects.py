"""The prefilter's custom resources, PacketFilter and CIDRDenyList (membrane.io/v1alpha1), defined
once (pure).

Both are cluster-scoped: the XDP prefilter runs on every node's devices, before any pod or
namespace is known for a packet.

- **PacketFilter**: rules that match a packet's shape (IPv4 header fields, TCP/UDP fields,
  payload bytes at an offset under a mask) and drop it, count it (audit) or limit its rate per
  source address; `spec.sanityChecks` switches on the built-in checks for malformed IPv4/TCP/UDP
  headers (Drop, or Count to audit first).
- **CIDRDenyList**: source prefixes dropped on arrival (longest-prefix match; a list holds up to
  MAX_DENY_CIDRS, so an object stays well below etcd's 1.5 MiB; split larger lists).

The OpenAPI v3 schema here is the one the CRDs carry (operator/crds.py wraps it): types, ranges,
enums, patterns for CIDRs and hex bytes, list sizes, and CEL rules (`x-kubernetes-validations`,
served by Kubernetes 1.25+) for what spans fields. A real API server refuses an invalid write
with it, so nothing changes. `RULE_CHECKS` holds each CEL rule's Python equivalent, so the
operator, the agent's local store (`membranectl apply -f`) and the API stand-in refuse the same
objects with the same field path and reason (membrane/schema_checking.py); a rule added to the
schema without one fails at import.

`canonical_spec` is what the state stream carries: the spec as the API server stores it
(unknown fields pruned), CIDRs in network form (`10.1.2.3/8` -> `10.0.0.0/8`, a bare address
-> `/32`), so equal filters compare equal on every replica.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from membrane.k8s_models import FieldError, ObjectMeta, ObjectValidationError
from membrane.schema_checking import RuleCheck, SchemaChecker

GROUP = "membrane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PACKET_FILTER = "PacketFilter"
CIDR_DENY_LIST = "CIDRDenyList"

MAX_RULES = 64  # rules per PacketFilter
MAX_RULE_CIDRS = 16  # sources (or destinations) per rule
MAX_PAYLOAD_MATCHES = 4  # payload byte patterns per rule
MAX_PAYLOAD_BYTES = 16  # bytes per payload pattern
MAX_PAYLOAD_OFFSET = 1500  # from the start of the L4 payload
MAX_DENY_CIDRS = 20000  # prefixes per CIDRDenyList (about 450 KiB of YAML)
MAX_RATE = 100_000_000  # packets per second per source

ACTIONS = ("Drop", "Count", "RateLimit")
SANITY_ACTIONS = ("Drop", "Count")
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
PROTOCOL_NAMES = {"ICMP": 1, "TCP": 6, "UDP": 17}

_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
CIDR_PATTERN = rf"^({_OCTET}\.){{3}}{_OCTET}(/([0-9]|[12][0-9]|3[0-2]))?$"
HEX_PATTERN = r"^([0-9a-fA-F]{2})+$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PATTERN_NAMES = {
    CIDR_PATTERN: "an IPv4 address or CIDR such as 192.0.2.0/24",
    HEX_PATTERN: "bytes in hex digits, two per byte, such as 0a1b",
    NAME_PATTERN: "a DNS label: lower-case letters, digits and '-', starting and ending with a letter or digit",
}


# --- the schema ---------------------------------------------------------------------------------
def _int(description: str, minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "description": description}


_RANGE_ORDER = "!has(self.min) || !has(self.max) || self.min <= self.max"


def _range(description: str, minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "object", "description": description + " Matches values in [min, max] (either may be left out).",
            "properties": {"min": _int("Lowest value matched.", minimum, maximum),
                           "max": _int("Highest value matched.", minimum, maximum)},
            "x-kubernetes-validations": [{"rule": _RANGE_ORDER, "message": "min must not exceed max"}]}


def _cidrs(description: str, max_items: int) -> dict[str, Any]:
    return {"type": "array", "description": description, "maxItems": max_items,
            "x-kubernetes-list-type": "set",
            "items": {"type": "string", "maxLength": 18, "pattern": CIDR_PATTERN}}


def _bool(description: str) -> dict[str, Any]:
    return {"type": "boolean", "description": description}


_FLAGS = {"type": "array", "maxItems": len(TCP_FLAGS), "x-kubernetes-list-type": "set",
          "items": {"type": "string", "enum": list(TCP_FLAGS)}}

_TCP_FLAGS_RULE = "!has(self.value) || self.value.all(f, f in self.mask)"
_PAYLOAD_SIZE_RULE = "!has(self.mask) || size(self.mask) == size(self.value)"
_RATE_RULE = "(self.action == 'RateLimit') == has(self.rateLimit)"
_ONE_L4_RULE = "!(has(self.tcp) && has(self.udp))"

RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One rule: every field given must match (fields left out match anything).",
    "required": ["name", "action"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": NAME_PATTERN,
                 "description": "Unique within the filter; names the rule in counters, flows and metrics."},
        "action": {"type": "string", "enum": list(ACTIONS),
                   "description": "Drop the packet, Count it only (audit), or RateLimit: pass at most "
                                  "rateLimit.packetsPerSecond per source address and drop the rest."},
        "rateLimit": {"type": "object", "description": "Required with action RateLimit, and only then.",
                      "required": ["packetsPerSecond"],
                      "properties": {"packetsPerSecond": _int("Packets per second passed per source "
                                                              "address.", 1, MAX_RATE)}},
        "sources": _cidrs("Source prefixes the rule applies to.", MAX_RULE_CIDRS),
        "destinations": _cidrs("Destination prefixes the rule applies to.", MAX_RULE_CIDRS),
        "ipv4": {
            "type": "object", "description": "IPv4 header fields.",
            "properties": {
                "protocol": {"x-kubernetes-int-or-string": True,
                             "description": "IP protocol: a number 0-255, or ICMP, TCP, UDP.",
                             "anyOf": [{"type": "integer", "minimum": 0, "maximum": 255},
                                       {"type": "string", "enum": list(PROTOCOL_NAMES)}]},
                "ttl": _range("Time to live.", 0, 255),
                "headerLength": _range("Header length in bytes (IHL x 4; 20 without options).", 0, 60),
                "totalLength": _range("The header's total length field, in bytes.", 0, 65535),
                "lengthMismatch": _bool("true: the total length field differs from the packet's actual "
                                        "length; false: they agree."),
                "optionsPresent": _bool("true: the header carries options (IHL > 5)."),
                "fragment": {
                    "type": "object", "description": "Fragmentation fields.",
                    "properties": {"dontFragment": _bool("The DF flag is set (true) or clear (false)."),
                                   "moreFragments": _bool("The MF flag is set (true) or clear (false)."),
                                   "offset": _range("Fragment offset in 8-byte units.", 0, 8191)}},
            },
        },
        "tcp": {
            "type": "object", "description": "TCP fields (the rule then matches TCP packets only).",
            "properties": {
                "sourcePort": _range("Source port.", 0, 65535),
                "destinationPort": _range("Destination port.", 0, 65535),
                "flags": {"type": "object", "description": "The flags in mask must be exactly those of "
                                                           "value: mask [SYN, ACK], value [SYN] matches "
                                                           "a SYN without ACK.",
                          "required": ["mask"],
                          "properties": {"mask": _FLAGS, "value": _FLAGS},
                          "x-kubernetes-validations": [{"rule": _TCP_FLAGS_RULE,
                                                        "message": "every flag in value must be in mask"}]},
                "dataOffset": _range("Data offset in 32-bit words (5 without options).", 0, 15),
            },
        },
        "udp": {
            "type": "object", "description": "UDP fields (the rule then matches UDP packets only).",
            "properties": {
                "sourcePort": _range("Source port.", 0, 65535),
                "destinationPort": _range("Destination port.", 0, 65535),
                "lengthMismatch": _bool("true: the UDP length field differs from the IP payload length."),
            },
        },
        "payload": {
            "type": "array", "maxItems": MAX_PAYLOAD_MATCHES,
            "description": "Bytes of the L4 payload (after the TCP/UDP header; after the IP header for "
                           "other protocols) at an offset, compared under a mask.",
            "items": {
                "type": "object", "required": ["offset", "value"],
                "properties": {
                    "offset": _int("Bytes from the start of the payload.", 0, MAX_PAYLOAD_OFFSET),
                    "value": {"type": "string", "maxLength": 2 * MAX_PAYLOAD_BYTES, "pattern": HEX_PATTERN,
                              "description": "The bytes, in hex."},
                    "mask": {"type": "string", "maxLength": 2 * MAX_PAYLOAD_BYTES, "pattern": HEX_PATTERN,
                             "description": "Which bits count, in hex, as long as value (default: all)."},
                },
                "x-kubernetes-validations": [{"rule": _PAYLOAD_SIZE_RULE,
                                              "message": "mask must be as long as value"}],
            },
        },
    },
    "x-kubernetes-validations": [
        {"rule": _RATE_RULE, "message": "rateLimit is required with action RateLimit and allowed only with it"},
        {"rule": _ONE_L4_RULE, "message": "a rule matches tcp or udp fields, not both"},
    ],
}

_CONDITION = {
    "type": "object", "required": ["type", "status"],
    "properties": {"type": {"type": "string", "maxLength": 316},
                   "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                   "reason": {"type": "string", "maxLength": 1024},
                   "message": {"type": "string", "maxLength": 32768},
                   "observedGeneration": {"type": "integer", "minimum": 0},
                   "lastTransitionTime": {"type": "string", "format": "date-time"}},
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Written by membrane-operator's leader.",
    "properties": {
        "observedGeneration": {"type": "integer", "description": "The generation the conditions describe."},
        "conditions": {"type": "array", "x-kubernetes-list-type": "map",
                       "x-kubernetes-list-map-keys": ["type"], "items": _CONDITION,
                       "description": "Accepted: the spec is valid and streamed to every node (False: "
                                      "the message names the field and the reason)."},
        "enforced": {"type": "string", "description": "N/M: N of the cluster's M nodes enforce the "
                                                      "current generation."},
        "enforcedGeneration": {"type": "integer", "description": "The newest generation every node "
                                                                "enforces."},
        "nodesByGeneration": {"type": "array", "description": "How many nodes enforce which generation "
                                                              "(nodes enforcing none are left out).",
                              "items": {"type": "object",
                                        "properties": {"generation": {"type": "integer"},
                                                       "nodes": {"type": "integer"}}}},
    },
}


def _object_schema(description: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "description": description, "required": ["spec"],
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                           "metadata": {"type": "object"}, "spec": spec, "status": STATUS_SCHEMA}}


PACKET_FILTER_SCHEMA = _object_schema(
    "Packet-shape rules the XDP prefilter of every node applies to arriving packets, before the "
    "kernel's stack.",
    {"type": "object",
     "properties": {
         "sanityChecks": {"type": "string", "enum": list(SANITY_ACTIONS),
                          "description": "Switches on the built-in checks for malformed IPv4/TCP/UDP headers "
                                         "that no legitimate stack sends: Drop them, or Count them (audit). "
                                         "Left out: off. Several filters: Drop wins."},
         "rules": {"type": "array", "maxItems": MAX_RULES, "items": RULE_SCHEMA,
                   "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                   "description": "Evaluated in order on every node; the first rule that matches decides."},
     }})

CIDR_DENY_LIST_SCHEMA = _object_schema(
    "Source prefixes the XDP prefilter of every node drops on arrival.",
    {"type": "object", "required": ["cidrs"],
     "properties": {"cidrs": _cidrs(f"IPv4 source prefixes (a bare address is a /32), at most "
                                    f"{MAX_DENY_CIDRS} per object: split larger lists.", MAX_DENY_CIDRS)}})


# --- the CEL rules' Python equivalents ------------------------------------------------------------
def _range_ordered(value: Mapping[str, Any]) -> bool:
    return "min" not in value or "max" not in value or value["min"] <= value["max"]


RULE_CHECKS: dict[str, RuleCheck] = {
    _RANGE_ORDER: _range_ordered,
    _TCP_FLAGS_RULE: lambda v: all(f in (v.get("mask") or ()) for f in v.get("value") or ()),
    _PAYLOAD_SIZE_RULE: lambda v: "mask" not in v or len(v["mask"]) == len(v["value"]),
    _RATE_RULE: lambda v: (v.get("action") == "RateLimit") == ("rateLimit" in v),
    _ONE_L4_RULE: lambda v: not ("tcp" in v and "udp" in v),
}

CHECKERS = {
    PACKET_FILTER: SchemaChecker(PACKET_FILTER_SCHEMA, RULE_CHECKS, PATTERN_NAMES),
    CIDR_DENY_LIST: SchemaChecker(CIDR_DENY_LIST_SCHEMA, RULE_CHECKS, PATTERN_NAMES),
}
KINDS = tuple(CHECKERS)


# --- objects ----------------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class PrefilterObject(_Model):
    """A PacketFilter or CIDRDenyList as stored (the spec checked, kept as given)."""

    api_version: str = Field(API_VERSION, alias="apiVersion")
    kind: Literal["PacketFilter", "CIDRDenyList"]
    metadata: ObjectMeta
    spec: dict[str, Any] = Field(default_factory=dict)


def object_errors(data: Mapping[str, Any], strict: bool = True) -> list[FieldError]:
    """What the API server would refuse in `data` (a PacketFilter or CIDRDenyList): schema,
    CEL rules, the name, and what only this side can tell (a protocol that contradicts tcp/udp
    fields). `strict`: unknown fields are errors too (what users apply)."""
    kind = str(data.get("kind", ""))
    errors = list(CHECKERS[kind].errors(dict(data), strict=strict))
    if data.get("apiVersion", API_VERSION) != API_VERSION:
        errors.insert(0, FieldError("apiVersion", f"{kind} must be {API_VERSION!r}, "
                                                  f"got {str(data.get('apiVersion'))[:64]!r}"))
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        errors.append(FieldError("metadata.name", "Required value"))
    elif len(name) > 253 or not all(_is_label(part) for part in name.split(".")):
        errors.append(FieldError("metadata.name", "must be a DNS subdomain (lower-case letters, digits, '-' "
                                                  "and '.', at most 253 characters)"))
    if isinstance(meta, Mapping) and meta.get("namespace"):
        errors.append(FieldError("metadata.namespace", f"{kind} is cluster-scoped: no namespace"))
    if not errors and kind == PACKET_FILTER:
        errors.extend(_protocol_errors(data["spec"]))
    return errors


def _is_label(text: str) -> bool:
    return bool(re.match(NAME_PATTERN, text)) and len(text) <= 63


def _protocol_errors(spec: Mapping[str, Any]) -> list[FieldError]:
    errors = []
    for index, rule in enumerate(spec.get("rules") or []):
        l4 = "tcp" if "tcp" in rule else "udp" if "udp" in rule else None
        protocol = (rule.get("ipv4") or {}).get("protocol")
        if l4 is not None and protocol is not None and protocol_number(protocol) != PROTOCOL_NAMES[l4.upper()]:
            errors.append(FieldError(f"spec.rules[{index}].ipv4.protocol",
                                     f"Invalid value: {json.dumps(protocol)}: the rule has {l4} fields, so "
                                     f"its protocol is {l4.upper()}"))
    return errors


def protocol_number(value: int | str) -> int:
    return PROTOCOL_NAMES[value] if isinstance(value, str) else int(value)


def parse_prefilter_object(data: Mapping[str, Any], strict: bool = False) -> PrefilterObject:
    """The checked object; ObjectValidationError naming each field and reason otherwise."""
    kind = str(data.get("kind", ""))
    meta = data.get("metadata")
    name = str(meta.get("name", "")) if isinstance(meta, Mapping) else ""
    errors = object_errors(data, strict=strict)
    if errors:
        raise ObjectValidationError(kind, name, errors)
    return PrefilterObject.model_validate(dict(data))


# --- what the stream carries ----------------------------------------------------------------------
def network(text: str) -> str:
    """A CIDR in network form (host bits cleared, a bare address as /32)."""
    return str(ipaddress.IPv4Network(text, strict=False))


def _pruned(value: Any, schema: Mapping[str, Any]) -> Any:
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        return {k: _pruned(v, properties[k]) for k, v in value.items() if k in properties}
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_pruned(v, schema["items"]) for v in value]
    return value


def canonical_spec(kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The checked spec as the stream carries it: unknown fields pruned, CIDRs in network form
    (duplicates that normalizing makes are dropped, order kept)."""
    schema = (PACKET_FILTER_SCHEMA if kind == PACKET_FILTER else CIDR_DENY_LIST_SCHEMA)["properties"]["spec"]
    out: dict[str, Any] = _pruned(dict(spec), schema)
    if kind == CIDR_DENY_LIST:
        out["cidrs"] = _networks(out.get("cidrs") or [])
        return out
    for rule in out.get("rules") or []:
        for key in ("sources", "destinations"):
            if key in rule:
                rule[key] = _networks(rule[key])
    return out


def _networks(cidrs: list[str]) -> list[str]:
    return list(dict.fromkeys(network(c) for c in cidrs))


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
