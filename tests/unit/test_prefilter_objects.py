"""PacketFilter and CIDRDenyList: one schema (the CRD's) refuses the same objects with the same
field and reason everywhere; valid ones become the stream's records the same way from the
Kubernetes watch and from `membranectl apply` (the local store)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from membrane.agent.api_serving import RequestError
from membrane.agent.local_source import LocalSource
from membrane.agent.object_store import ObjectStore
from membrane.api.state_codec import change_from_pb, change_to_pb, object_bytes, object_from_bytes
from membrane.api.state_objects import Change, CIDRDenyChunkState, CIDRDenyListState, Kind, PacketFilterState
from membrane.k8s_models import ObjectValidationError, parse_object
from membrane.operator.crds import CIDR_DENY_LIST_CRD, PACKET_FILTER_CRD
from membrane.operator.state_building import StateBuilder
from membrane.prefilter_checking import object_errors
from membrane.prefilter_chunking import bucket_of
from membrane.prefilter_objects import (
    CIDR_DENY_LIST_SCHEMA,
    MAX_DENY_CIDRS,
    PACKET_FILTER_SCHEMA,
    PATTERN_NAMES,
    RULE_CHECKS,
    canonical_spec,
)
from membrane.schema_checking import SchemaChecker, UnknownRule, rule_texts
from membrane.strict_fields import strict_errors

JSON = dict[str, Any]


def packet_filter(name: str = "cve", generation: int = 1, **spec: Any) -> JSON:
    return {"apiVersion": "membrane.io/v1alpha1", "kind": "PacketFilter",
            "metadata": {"name": name, "generation": generation}, "spec": spec}


def deny_list(name: str = "bad", cidrs: list[str] | None = None) -> JSON:
    return {"apiVersion": "membrane.io/v1alpha1", "kind": "CIDRDenyList", "metadata": {"name": name},
            "spec": {"cidrs": ["203.0.113.0/24"] if cidrs is None else cidrs}}


FULL_RULES = [
    {"name": "frag-of-death", "action": "Drop", "source": "198.51.0.0/16", "destination": "10.0.0.7",
     "ipv4": {"protocol": "UDP", "ttl": {"min": 1, "max": 3}, "headerLength": {"min": 24},
              "totalLength": {"max": 100}, "lengthMismatch": "Shorter", "totalLengthBelowHeader": False,
              "fragment": {"reserved": False, "dontFragment": False, "moreFragments": True,
                           "offset": {"min": 0, "max": 0}, "overflow": False}},
     "udp": {"sourcePort": {"min": 0, "max": 1023}, "destinationPort": {"min": 53, "max": 53},
             "lengthMismatch": True},
     "payload": {"offsetFrom": "L4Header", "offset": 8, "value": "DEAD00ef", "mask": "ffff00ff"}},
    {"name": "syn-flood", "action": "RateLimit", "rateLimit": {"packetsPerSecond": 1000, "burst": 50},
     "ipv4": {"protocol": 6, "optionsPresent": False},
     "tcp": {"destinationPort": {"min": 80, "max": 443}, "flags": {"mask": ["SYN", "ACK"], "value": ["SYN"]},
             "dataOffset": {"max": 15}}},
    {"name": "audit-icmp", "action": "Count", "ipv4": {"protocol": "ICMP"}},
    {"name": "sctp-probe", "action": "Count", "sctp": {"destinationPort": {"min": 9}}},
    {"name": "runt", "action": "Drop", "ipv4": {"truncated": True}},
]

VALID = packet_filter(sanityChecks="Drop", rules=FULL_RULES)


def _rule(**changes: Any) -> JSON:
    rule: JSON = {"name": "r", "action": "Drop"}
    rule.update(changes)
    return packet_filter(rules=[rule])


# (object, the one error expected: field path, start of the reason)
INVALID: list[tuple[JSON, str, str]] = [
    (_rule(action="Reject"), "spec.rules[0].action", 'Unsupported value: "Reject": supported values: "Drop"'),
    (_rule(name="Bad_Name"), "spec.rules[0].name", 'Invalid value: "Bad_Name": must be a DNS label'),
    (_rule(source="10.0.0.300/8"), "spec.rules[0].source", 'Invalid value: "10.0.0.300/8": must be an IPv4'),
    (_rule(source="10.0.0.0/33"), "spec.rules[0].source", "Invalid value"),
    (_rule(source=["10.0.0.0/8"]), "spec.rules[0].source", "must be of type string, got array"),
    (_rule(destination="10.1.2.3/8"), "spec.rules[0].destination",
     "Invalid value: '10.1.2.3/8': host bits set (the prefix is 10.0.0.0/8: write that, or 10.1.2.3/32"),
    (_rule(ipv4={"protocol": 256}), "spec.rules[0].ipv4.protocol", "should be less than or equal to 255"),
    (_rule(ipv4={"protocol": "GRE"}), "spec.rules[0].ipv4.protocol", 'Unsupported value: "GRE"'),
    (_rule(ipv4={"protocol": True}), "spec.rules[0].ipv4.protocol", "must be of type integer or string, got boolean"),
    (_rule(ipv4={"ttl": {"min": 9, "max": 3}}), "spec.rules[0].ipv4.ttl", "min must not exceed max"),
    (_rule(ipv4={"headerLength": {"max": 64}}), "spec.rules[0].ipv4.headerLength.max", "should be less than or equal to 60"),
    (_rule(ipv4={"headerLength": {"max": 20}, "optionsPresent": True}), "spec.rules[0].ipv4",
     "give headerLength or optionsPresent, not both"),
    (_rule(ipv4={"fragment": {"offset": {"min": -1}}}), "spec.rules[0].ipv4.fragment.offset.min", "should be greater than or equal to 0"),
    (_rule(ipv4={"lengthMismatch": True}), "spec.rules[0].ipv4.lengthMismatch", "must be of type string, got boolean"),
    (_rule(ipv4={"lengthMismatch": "Short"}), "spec.rules[0].ipv4.lengthMismatch", 'Unsupported value: "Short"'),
    (_rule(ipv4={"truncated": True, "ttl": {"max": 1}}), "spec.rules[0]",
     "ipv4.truncated matches frames too short for an IPv4 header"),
    (_rule(ipv4={"truncated": True}, source="192.0.2.0/24"), "spec.rules[0]", "ipv4.truncated matches"),
    (_rule(tcp={"destinationPort": {"min": 70000}}), "spec.rules[0].tcp.destinationPort.min", "should be less than or equal to 65535"),
    (_rule(tcp={"flags": {"mask": ["SYN"], "value": ["ACK"]}}), "spec.rules[0].tcp.flags", "every flag in value must be in mask"),
    (_rule(tcp={"flags": {"value": ["SYN"]}}), "spec.rules[0].tcp.flags.mask", "Required value"),
    (_rule(tcp={"flags": {"mask": ["SYNN"]}}), "spec.rules[0].tcp.flags.mask[0]", 'Unsupported value: "SYNN"'),
    (_rule(tcp={"truncated": True, "sourcePort": {"min": 1}}), "spec.rules[0].tcp",
     "truncated matches a cut-short header: give no other tcp field"),
    (_rule(udp={"truncated": True, "lengthMismatch": False}), "spec.rules[0].udp", "truncated matches a cut-short"),
    (_rule(tcp={}, udp={}), "spec.rules[0]", "a rule has one of tcp, udp and sctp at most"),
    (_rule(sctp={"truncated": True}), "spec.rules[0].sctp.truncated", "unknown field"),
    (_rule(tcp={}, ipv4={"protocol": "UDP"}), "spec.rules[0]", "ipv4.protocol must be the protocol of the rule's tcp"),
    (_rule(sctp={}, ipv4={"protocol": 6}), "spec.rules[0]", "ipv4.protocol must be the protocol"),
    (_rule(payload={"offset": 0, "value": "abc"}), "spec.rules[0].payload.value", "Invalid value: \"abc\": must be bytes in hex"),
    (_rule(payload={"offset": 0, "value": "zz"}), "spec.rules[0].payload.value", "Invalid value"),
    (_rule(payload={"offset": 0, "value": "00" * 17}), "spec.rules[0].payload.value", "may not be more than 32 chars long"),
    (_rule(payload={"offset": 1501, "value": "00"}), "spec.rules[0].payload.offset", "should be less than or equal to 1500"),
    (_rule(payload={"offset": 0, "value": "0000", "mask": "ff"}), "spec.rules[0].payload", "mask must be as long as value"),
    (_rule(payload={"offset": 0, "value": "0f", "mask": "f0"}), "spec.rules[0].payload.value", "sets bits outside the mask"),
    (_rule(payload={"value": "00"}), "spec.rules[0].payload.offset", "Required value"),
    (_rule(payload={"offset": 0, "value": "00", "offsetFrom": "Ethernet"}), "spec.rules[0].payload.offsetFrom", 'Unsupported value: "Ethernet"'),
    (_rule(action="RateLimit"), "spec.rules[0]", "rateLimit is required with action RateLimit"),
    (_rule(rateLimit={"packetsPerSecond": 5}), "spec.rules[0]", "rateLimit is required with action RateLimit and allowed only"),
    (_rule(action="RateLimit", rateLimit={"packetsPerSecond": 0}), "spec.rules[0].rateLimit.packetsPerSecond", "should be greater than or equal to 1"),
    (_rule(action="RateLimit", rateLimit={"packetsPerSecond": 1.5}), "spec.rules[0].rateLimit.packetsPerSecond", "must be of type integer, got number"),
    (_rule(tcp={"sourcePorts": {"min": 1}}), "spec.rules[0].tcp.sourcePorts", "unknown field"),
    (packet_filter(rules=[{"name": "a", "action": "Drop"}, {"name": "a", "action": "Count"}]), "spec.rules[1]", 'Duplicate value: name: "a"'),
    (packet_filter(rules=[{"name": f"r{i}", "action": "Drop"} for i in range(65)]), "spec.rules", "Too many: 65: must have at most 64"),
    (packet_filter(rules=[{"action": "Drop"}]), "spec.rules[0].name", "Required value"),
    (packet_filter(sanityChecks="On"), "spec.sanityChecks", 'Unsupported value: "On": supported values: "Drop", "Count"'),
    (packet_filter(name="Upper"), "metadata.name", "must be a DNS subdomain"),
    (packet_filter(name="sanity"), "metadata.name", "the name 'sanity' is reserved for the built-in sanity checks"),
    (packet_filter(name="a" * 63 + "." + "b" * 63 + "." + "c" * 62, rules=[{"name": "rule", "action": "Drop"}]),
     "metadata.name", "at most 189 characters"),
    ({**packet_filter(), "metadata": {"name": "x", "namespace": "default"}}, "metadata.namespace", "PacketFilter is cluster-scoped"),
    ({**packet_filter(), "apiVersion": "membrane.io/v1"}, "apiVersion", "PacketFilter must be 'membrane.io/v1alpha1'"),
    ({k: v for k, v in packet_filter().items() if k != "spec"}, "spec", "Required value"),
    (deny_list(cidrs=["2001:db8::/32"]), "spec.cidrs[0]", "Invalid value: \"2001:db8::/32\": must be an IPv4"),
    (deny_list(cidrs=["10.0.0.0/8"] * 2), "spec.cidrs[1]", "Duplicate value"),
    (deny_list(cidrs=["192.0.2.0/24", "198.51.100.1/24"]), "spec.cidrs[1]", "Invalid value: '198.51.100.1/24': host bits set"),
    (deny_list(cidrs=[f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(MAX_DENY_CIDRS + 1)]),
     "spec.cidrs", f"Too many: {MAX_DENY_CIDRS + 1}: must have at most {MAX_DENY_CIDRS}"),
    ({**deny_list(), "spec": {}}, "spec.cidrs", "Required value"),
]


def test_valid_objects_pass_strictly() -> None:
    assert object_errors(VALID) == []
    assert object_errors(deny_list()) == []
    assert object_errors(packet_filter()) == []  # no rules, no checks: a filter that does nothing


@pytest.mark.parametrize(("obj", "path", "reason"), INVALID, ids=[f"{p}:{r[:30]}" for _o, p, r in INVALID])
def test_each_problem_is_named_by_field_and_reason(obj: JSON, path: str, reason: str) -> None:
    errors = object_errors(obj)
    assert [(e.path, e.reason[:len(reason)]) for e in errors] == [(path, reason)], errors
    if reason != "unknown field":  # parse_object reads what an API server stored: pruned, not refused
        with pytest.raises(ObjectValidationError) as caught:
            parse_object(obj)
        assert f"{path}: {reason}" in str(caught.value)


def test_unknown_fields_are_errors_only_when_strict() -> None:
    obj = _rule(colour="red")
    assert [str(e) for e in object_errors(obj)] == ["spec.rules[0].colour: unknown field"]
    assert object_errors(obj, strict=False) == []  # read back from an API server that pruned it
    assert [str(e) for e in strict_errors(obj)] == ["spec.rules[0].colour: unknown field"]
    assert "colour" not in json.dumps(canonical_spec("PacketFilter", obj["spec"]))


def test_every_cel_rule_of_the_crds_has_a_python_equivalent() -> None:
    for crd in (PACKET_FILTER_CRD, CIDR_DENY_LIST_CRD):
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert set(rule_texts(schema)) <= set(RULE_CHECKS)
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
    with pytest.raises(UnknownRule, match="self.x > 1"):
        SchemaChecker({"type": "object", "x-kubernetes-validations": [{"rule": "self.x > 1"}]}, RULE_CHECKS)


def _without_k8s_extensions(schema: Any) -> Any:
    """The schema as plain JSON Schema: CEL rules and list types dropped (jsonschema knows neither)."""
    if isinstance(schema, dict):
        return {k: _without_k8s_extensions(v) for k, v in schema.items()
                if k not in ("x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys")}
    if isinstance(schema, list):
        return [_without_k8s_extensions(v) for v in schema]
    return schema


def test_the_checker_agrees_with_jsonschema_on_the_structural_schema() -> None:
    """The same accept/refuse and the same field for every case, valid or not, against a real
    JSON Schema validator (CEL rules and list uniqueness left out: JSON Schema has neither)."""
    for kind, kind_schema in (("PacketFilter", PACKET_FILTER_SCHEMA), ("CIDRDenyList", CIDR_DENY_LIST_SCHEMA)):
        plain = _without_k8s_extensions(kind_schema)
        ours = SchemaChecker(plain, {}, PATTERN_NAMES)
        reference = jsonschema.Draft7Validator(plain)
        cases = [VALID, deny_list()] + [obj for obj, _p, _r in INVALID]
        compared = 0
        for obj in cases:
            if obj["kind"] != kind:
                continue
            mine = {e.path for e in ours.errors(obj, strict=False)}
            theirs = {_path(e.absolute_path, e) for e in reference.iter_errors(obj)}
            assert mine == theirs, (obj, mine, theirs)
            compared += 1
        assert compared >= 4


def _path(parts: Any, error: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if error.validator == "required":  # jsonschema names the object; the API server names the field
        missing = error.message.split("'")[1]
        out = f"{out}.{missing}" if out else missing
    return out


def test_canonical_spec_writes_a_bare_address_as_a_host_prefix() -> None:
    spec = canonical_spec("PacketFilter", VALID["spec"])
    assert (spec["rules"][0]["source"], spec["rules"][0]["destination"]) == ("198.51.0.0/16", "10.0.0.7/32")
    assert canonical_spec("CIDRDenyList", {"cidrs": ["10.0.0.0/8", "192.0.2.9"]}) == \
        {"cidrs": ["10.0.0.0/8", "192.0.2.9/32"]}


# --- records, wire and persistence ---------------------------------------------------------------
def test_builder_streams_valid_filters_and_leaves_invalid_ones_out() -> None:
    builder = StateBuilder()
    builder.set_packet_filter("cve", VALID)
    builder.set_cidr_deny_list("bad", deny_list(cidrs=["10.0.0.0/8"]))
    changes = builder.take_changes()
    record = changes[(Kind.PACKET_FILTER, "cve")]
    assert isinstance(record, PacketFilterState) and record.generation == 1
    assert json.loads(record.spec_json) == canonical_spec("PacketFilter", VALID["spec"])
    head = changes[(Kind.CIDR_DENY_LIST, "bad")]
    assert isinstance(head, CIDRDenyListState) and (head.name, head.generation, head.cidrs) == ("bad", 0, ())
    bucket = bucket_of("10.0.0.0/8")
    assert changes[(Kind.CIDR_DENY_CHUNK, f"bad/{bucket}")] == CIDRDenyChunkState("bad", bucket, ("10.0.0.0/8",))
    broken = copy.deepcopy(VALID)
    broken["spec"]["rules"][0]["action"] = "Reject"
    builder.set_packet_filter("cve", broken)
    assert builder.take_changes() == {(Kind.PACKET_FILTER, "cve"): None}
    builder.set_cidr_deny_list("bad", None)
    assert builder.take_changes() == {(Kind.CIDR_DENY_LIST, "bad"): None, (Kind.CIDR_DENY_CHUNK, f"bad/{bucket}"): None}


@pytest.mark.parametrize("record", [
    PacketFilterState("cve", 7, '{"rules":[]}'), CIDRDenyListState("bad", 3, ("10.0.0.0/8", "192.0.2.1/32")),
    CIDRDenyListState("bad", 3, (), "0123456789abcdef"), CIDRDenyChunkState("bad/x", 63, ("192.0.2.1/32",))])
def test_records_cross_the_wire_and_the_state_file_unchanged(
        record: PacketFilterState | CIDRDenyListState | CIDRDenyChunkState) -> None:
    key = (record.kind, record.key)
    assert change_from_pb(change_to_pb(Change(key, record))) == Change(key, record)
    assert change_from_pb(change_to_pb(Change(key, None))) == Change(key, None)
    assert object_from_bytes(object_bytes(record)) == record  # as the cluster cache stores it


def test_membranectl_apply_refuses_an_invalid_filter_and_changes_nothing(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    store.load()
    assert [o["action"] for o in store.apply([VALID, deny_list()])] == ["created", "created"]
    broken = copy.deepcopy(VALID)
    broken["spec"]["rules"][1]["rateLimit"]["packetsPerSecond"] = 0
    with pytest.raises(RequestError) as caught:
        store.apply([deny_list(cidrs=["198.51.100.0/24"]), broken])  # one bad object: the whole batch refused
    assert caught.value.code == 422
    assert caught.value.details == ["PacketFilter cve: spec.rules[1].rateLimit.packetsPerSecond: "
                                    "should be greater than or equal to 1"]
    assert store.raw[("PacketFilter", "", "cve")] == VALID
    assert store.raw[("CIDRDenyList", "", "bad")] == deny_list()


def test_the_local_store_and_the_watch_give_the_same_records(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    store.load()
    source = LocalSource("node-a")
    store.listeners.append(source.on_object)
    local_filter = copy.deepcopy(VALID)
    del local_filter["metadata"]["generation"]  # a local store has no generations
    store.apply([local_filter, deny_list()])
    delta = source.commit()
    assert delta is not None
    builder = StateBuilder()
    builder.set_packet_filter("cve", local_filter)
    builder.set_cidr_deny_list("bad", deny_list())
    assert {c.key: c.obj for c in delta.changes} == builder.take_changes()
    store.delete([deny_list()])
    delta = source.commit()
    assert delta is not None and {c.key: c.obj for c in delta.changes} == {
        (Kind.CIDR_DENY_LIST, "bad"): None,
        **{(Kind.CIDR_DENY_CHUNK, f"bad/{bucket_of(c)}"): None for c in deny_list()["spec"]["cidrs"]}}


def test_the_readme_examples_are_accepted() -> None:
    import textwrap

    import yaml

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("### Packet filters and CIDR deny lists", 1)[1]
    block = next(part for part in section.split("\n\n") if part.startswith("    apiVersion:"))
    documents = list(yaml.safe_load_all(textwrap.dedent(block)))
    assert [d["kind"] for d in documents] == ["PacketFilter", "CIDRDenyList"]
    for document in documents:
        assert object_errors(document) == [], document
