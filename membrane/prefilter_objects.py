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

Checks beyond the schema (a CIDR with host bits set, a protocol that contradicts the tcp/udp
part, what the rule model refuses) are in membrane/prefilter_checking.py; the conversion to the
datapath's rule model in membrane/prefilter_converting.py. `canonical_spec` is what the state
stream carries: the spec as the API server stores it (unknown fields pruned), a bare address as
`/32`, so equal filters compare equal on every replica.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from membrane.k8s_models import ObjectMeta
from membrane.prefilter_rules import MAX_RULES as NODE_MAX_RULES
from membrane.schema_checking import RuleCheck, SchemaChecker, pruned

GROUP = "membrane.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PACKET_FILTER = "PacketFilter"
CIDR_DENY_LIST = "CIDRDenyList"

MAX_RULES = 64  # rules per PacketFilter
MAX_PAYLOAD_BYTES = 16  # bytes per payload pattern
MAX_PAYLOAD_OFFSET = 1500  # from the start of the L4 payload
MAX_DENY_CIDRS = 20000  # prefixes per CIDRDenyList (about 450 KiB of YAML)
MAX_RATE = 100_000_000  # packets per second per source

ACTIONS = ("Drop", "Count", "RateLimit")
SANITY_ACTIONS = ("Drop", "Count")
TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
PROTOCOL_NAMES = {"ICMP": 1, "TCP": 6, "UDP": 17, "SCTP": 132}
LENGTH_MISMATCHES = ("Shorter", "Longer", "Any")
OFFSET_BASES = ("IPHeader", "L4Header", "Payload")

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
            "x-kubernetes-list-type": "set", "items": _cidr("A prefix.")}


def _cidr(description: str) -> dict[str, Any]:
    return {"type": "string", "maxLength": 18, "pattern": CIDR_PATTERN, "description": description}


def _bool(description: str) -> dict[str, Any]:
    return {"type": "boolean", "description": description}


def _flags(description: str) -> dict[str, Any]:
    return {"type": "array", "maxItems": len(TCP_FLAGS), "x-kubernetes-list-type": "set", "description": description,
            "items": {"type": "string", "enum": list(TCP_FLAGS)}}


def _ports(truncated: str | None = None) -> dict[str, Any]:
    properties = {"sourcePort": _range("Source port.", 0, 65535),
                  "destinationPort": _range("Destination port.", 0, 65535)}
    if truncated:
        properties["truncated"] = _bool(f"true: a first fragment whose {truncated} header is cut short (no "
                                        f"other field of the rule's L4 part is then given).")
    return properties


def _truncated_alone(fields: tuple[str, ...]) -> str:
    """CEL: `truncated: true` comes with none of `fields` (a cut-short header has none to read)."""
    return "!has(self.truncated) || !self.truncated || !(" + " || ".join(f"has(self.{f})" for f in fields) + ")"


def _protocol_of(part: str, number: int) -> str:
    return f"!has(self.{part}) || self.ipv4.protocol == {number} || self.ipv4.protocol == '{part.upper()}'"


_TCP_FLAGS_RULE = "!has(self.value) || self.value.all(f, f in self.mask)"
_PAYLOAD_SIZE_RULE = "!has(self.mask) || size(self.mask) == size(self.value)"
_RATE_RULE = "(self.action == 'RateLimit') == has(self.rateLimit)"
_ONE_L4_RULE = "(has(self.tcp) ? 1 : 0) + (has(self.udp) ? 1 : 0) + (has(self.sctp) ? 1 : 0) <= 1"
_HEADER_LENGTH_RULE = "!(has(self.headerLength) && has(self.optionsPresent))"
_IPV4_FIELDS = ("protocol", "headerLength", "optionsPresent", "totalLength", "lengthMismatch",
                "totalLengthBelowHeader", "ttl", "fragment")
_RULE_READS = ("source", "destination", "payload", "tcp", "udp", "sctp")
_IPV4_TRUNCATED_RULE = ("!has(self.ipv4) || !has(self.ipv4.truncated) || !self.ipv4.truncated || !("
                        + " || ".join([f"has(self.{f})" for f in _RULE_READS] + [f"has(self.ipv4.{f})" for f in _IPV4_FIELDS])
                        + ")")
_TCP_FIELDS = ("sourcePort", "destinationPort", "flags", "dataOffset")
_UDP_FIELDS = ("sourcePort", "destinationPort", "lengthMismatch")
_TCP_TRUNCATED_RULE = _truncated_alone(_TCP_FIELDS)
_UDP_TRUNCATED_RULE = _truncated_alone(_UDP_FIELDS)
_L4_PROTOCOL_RULE = ("!has(self.ipv4) || !has(self.ipv4.protocol) || ("
                     + ") && (".join(_protocol_of(p, n) for p, n in (("tcp", 6), ("udp", 17), ("sctp", 132))) + ")")
_RESERVED_NAME_RULE = "self.metadata.name != 'sanity'"
_NAME_LENGTH_RULE = "size(self.metadata.name) <= 189"

RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "One rule: every part given must match (parts left out match anything). Only IPv4 "
                   "packets are looked at; L4 parts match first fragments only.",
    "required": ["name", "action"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": NAME_PATTERN,
                 "description": "Unique within the filter; `<filter>.<rule>` names it in counters, flows "
                                "and metrics."},
        "action": {"type": "string", "enum": list(ACTIONS),
                   "description": "Drop the packet; Count it only (audit) and go on; RateLimit: pass at most "
                                  "rateLimit.packetsPerSecond per source address and drop the rest."},
        "rateLimit": {"type": "object", "description": "Required with action RateLimit, and only then.",
                      "required": ["packetsPerSecond"],
                      "properties": {
                          "packetsPerSecond": _int("Packets per second passed per source address.", 1, MAX_RATE),
                          "burst": _int("Packets a quiet source may send at once (default: one second's "
                                        "worth).", 1, MAX_RATE)}},
        "source": _cidr("Source prefix (one; a bare address is a /32)."),
        "destination": _cidr("Destination prefix (one; a bare address is a /32)."),
        "ipv4": {
            "type": "object", "description": "IPv4 header fields.",
            "properties": {
                "protocol": {"x-kubernetes-int-or-string": True,
                             "description": "IP protocol: a number 0-255, or ICMP, TCP, UDP, SCTP.",
                             "anyOf": [{"type": "integer", "minimum": 0, "maximum": 255},
                                       {"type": "string", "enum": list(PROTOCOL_NAMES)}]},
                "headerLength": _range("Header length in bytes (IHL x 4; 20 without options).", 0, 60),
                "optionsPresent": _bool("true: the header carries options (IHL > 5); false: it does not. "
                                        "Give this or headerLength."),
                "totalLength": _range("The header's total length field, in bytes.", 0, 65535),
                "lengthMismatch": {"type": "string", "enum": list(LENGTH_MISMATCHES),
                                   "description": "The frame holds fewer bytes than the total length "
                                                  "says (Shorter), more beyond Ethernet padding "
                                                  "(Longer), or either (Any)."},
                "totalLengthBelowHeader": _bool("true: the total length is smaller than the header length."),
                "ttl": _range("Time to live.", 0, 255),
                "fragment": {
                    "type": "object", "description": "Fragmentation: each flag required set (true) or "
                                                     "clear (false), or not looked at (left out).",
                    "properties": {"reserved": _bool("The reserved flag bit."),
                                   "dontFragment": _bool("The DF flag."),
                                   "moreFragments": _bool("The MF flag."),
                                   "offset": _range("Fragment offset in 8-byte units.", 0, 8191),
                                   "overflow": _bool("true: offset x 8 + payload reaches beyond 65535 "
                                                     "bytes (the ping of death).")}},
                "truncated": _bool("true: the frame is shorter than the IPv4 header (no other part of "
                                   "the rule is then given)."),
            },
            "x-kubernetes-validations": [{"rule": _HEADER_LENGTH_RULE,
                                          "message": "give headerLength or optionsPresent, not both"}],
        },
        "tcp": {
            "type": "object", "description": "TCP fields: the rule then matches TCP only.",
            "properties": {
                **_ports("TCP"),
                "flags": {"type": "object", "description": "The flags in mask must be exactly those of value: "
                                                           "mask [SYN, ACK] and value [SYN] match a SYN "
                                                           "without ACK.",
                          "required": ["mask"],
                          "properties": {"mask": _flags("Flags looked at."),
                                         "value": _flags("Those of mask that must be set.")},
                          "x-kubernetes-validations": [{"rule": _TCP_FLAGS_RULE,
                                                        "message": "every flag in value must be in mask"}]},
                "dataOffset": _range("Data offset in 32-bit words (5 without options).", 0, 15),
            },
            "x-kubernetes-validations": [{"rule": _TCP_TRUNCATED_RULE, "message": "truncated matches a cut-short "
                                                                                  "header: give no other tcp field"}],
        },
        "udp": {
            "type": "object", "description": "UDP fields: the rule then matches UDP only.",
            "properties": {**_ports("UDP"),
                           "lengthMismatch": _bool("true: the UDP length differs from the IP payload length "
                                                   "(unfragmented packets).")},
            "x-kubernetes-validations": [{"rule": _UDP_TRUNCATED_RULE, "message": "truncated matches a cut-short "
                                                                                  "header: give no other udp field"}],
        },
        "sctp": {"type": "object", "description": "SCTP ports: the rule then matches SCTP only.",
                 "properties": _ports()},
        "payload": {
            "type": "object", "required": ["offset", "value"],
            "description": "Bytes at an offset, compared under a mask. A packet too short to hold them "
                           "does not match.",
            "properties": {
                "offsetFrom": {"type": "string", "enum": list(OFFSET_BASES),
                               "description": "Where the offset counts from: the IPv4 header's first byte, "
                                              "the L4 header's, or the L4 payload's (after the TCP/UDP "
                                              "header; default)."},
                "offset": _int("Bytes from offsetFrom.", 0, MAX_PAYLOAD_OFFSET),
                "value": {"type": "string", "maxLength": 2 * MAX_PAYLOAD_BYTES, "pattern": HEX_PATTERN,
                          "description": f"1 to {MAX_PAYLOAD_BYTES} bytes, in hex."},
                "mask": {"type": "string", "maxLength": 2 * MAX_PAYLOAD_BYTES, "pattern": HEX_PATTERN,
                         "description": "Which bits count, in hex, as long as value (default: all)."},
            },
            "x-kubernetes-validations": [{"rule": _PAYLOAD_SIZE_RULE, "message": "mask must be as long as value"}],
        },
    },
    "x-kubernetes-validations": [
        {"rule": _RATE_RULE, "message": "rateLimit is required with action RateLimit and allowed only with it"},
        {"rule": _ONE_L4_RULE, "message": "a rule has one of tcp, udp and sctp at most"},
        {"rule": _L4_PROTOCOL_RULE, "message": "ipv4.protocol must be the protocol of the rule's tcp, udp or "
                                               "sctp part"},
        {"rule": _IPV4_TRUNCATED_RULE, "message": "ipv4.truncated matches frames too short for an IPv4 header: "
                                                  "the rule can have no other part to read"},
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


def _object_schema(description: str, spec: dict[str, Any],
                   rules: list[dict[str, str]] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "description": description, "required": ["spec"],
                              "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                             "metadata": {"type": "object"}, "spec": spec, "status": STATUS_SCHEMA}}
    if rules:
        schema["x-kubernetes-validations"] = rules
    return schema


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
                   "description": f"Checked in order on every node (filters by name, after the sanity "
                                  f"checks): Count and RateLimit rules with tokens left go on, the first "
                                  f"matching Drop (or empty rate bucket) drops. At most {MAX_RULES} per "
                                  f"filter; a node holds {NODE_MAX_RULES} rules in all, sanity checks included."},
     }},
    [{"rule": _RESERVED_NAME_RULE, "message": "the name 'sanity' is reserved for the built-in sanity checks' "
                                              "counters"},
     {"rule": _NAME_LENGTH_RULE, "message": "at most 189 characters: rules are named <filter>.<rule> in "
                                            "253 at most"}])

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
    _ONE_L4_RULE: lambda v: sum(k in v for k in ("tcp", "udp", "sctp")) <= 1,
    _HEADER_LENGTH_RULE: lambda v: not ("headerLength" in v and "optionsPresent" in v),
    _IPV4_TRUNCATED_RULE: lambda v: not (v.get("ipv4") or {}).get("truncated")
    or not (any(f in v for f in _RULE_READS) or any(f in v["ipv4"] for f in _IPV4_FIELDS)),
    _TCP_TRUNCATED_RULE: lambda v: not v.get("truncated") or not any(f in v for f in _TCP_FIELDS),
    _UDP_TRUNCATED_RULE: lambda v: not v.get("truncated") or not any(f in v for f in _UDP_FIELDS),
    _L4_PROTOCOL_RULE: lambda v: "protocol" not in (v.get("ipv4") or {})
    or all(v["ipv4"]["protocol"] in (number, part.upper()) for part, number in (("tcp", 6), ("udp", 17), ("sctp", 132))
           if part in v),
    _RESERVED_NAME_RULE: lambda v: (v.get("metadata") or {}).get("name") != "sanity",
    _NAME_LENGTH_RULE: lambda v: len(str((v.get("metadata") or {}).get("name", ""))) <= 189,
}

RULE_FIELDS = {_RESERVED_NAME_RULE: "metadata.name", _NAME_LENGTH_RULE: "metadata.name"}
CHECKERS = {
    PACKET_FILTER: SchemaChecker(PACKET_FILTER_SCHEMA, RULE_CHECKS, PATTERN_NAMES, RULE_FIELDS),
    CIDR_DENY_LIST: SchemaChecker(CIDR_DENY_LIST_SCHEMA, RULE_CHECKS, PATTERN_NAMES, RULE_FIELDS),
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


# --- what the stream carries ----------------------------------------------------------------------
def cidr_parts(text: str) -> tuple[int, int]:
    """A checked CIDR (CIDR_PATTERN) as (address, prefix length); a bare address is a /32.
    Integer arithmetic: ipaddress takes ~10x longer, which a 20,000-prefix list feels."""
    address, _, length = text.partition("/")
    a, b, c, d = address.split(".")
    return (int(a) << 24) | (int(b) << 16) | (int(c) << 8) | int(d), int(length or 32)


def network(text: str) -> str:
    """A checked CIDR in the stream's form: a bare address as /32 (the pattern admits no other
    spelling of the same prefix: no leading zeros, no spaces)."""
    return text if "/" in text else f"{text}/32"


def canonical_spec(kind: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A checked spec as the stream carries it: unknown fields pruned (as the API server
    stores it), bare addresses as /32."""
    schema = (PACKET_FILTER_SCHEMA if kind == PACKET_FILTER else CIDR_DENY_LIST_SCHEMA)["properties"]["spec"]
    out: dict[str, Any] = pruned(dict(spec), schema)
    if kind == CIDR_DENY_LIST:
        out["cidrs"] = [network(c) for c in out.get("cidrs") or []]
        return out
    for rule in out.get("rules") or []:
        for key in ("source", "destination"):
            if key in rule:
                rule[key] = network(rule[key])
    return out


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
