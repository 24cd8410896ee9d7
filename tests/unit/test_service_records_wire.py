"""Service and EndpointSlice records over the wire (membrane/api/state_codec.py) and in the
agent's cluster cache (agent/cluster_persisting.py, state.db; an earlier release's JSON cache is
read by agent/legacy_reading.py): every field survives the round trip, and a delete carries
the key only."""

from __future__ import annotations

import dataclasses
import json

from membrane.agent import legacy_reading
from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state_codec import change_from_pb, change_to_pb, object_bytes, object_from_bytes
from membrane.api.state_objects import (
    Change,
    EndpointPortState,
    EndpointSliceState,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
    StateKey,
    StateObject,
)

SERVICE = ServiceState(
    "shop", "web", "LoadBalancer", ("10.96.0.10", "fd00:96::10"),
    (ServicePortState("http", "TCP", 80, "web", 30080), ServicePortState("dns", "UDP", 53, "5353", 30053)),
    ("192.0.2.7",), ("203.0.113.5",), 600, True, True, 32000)
SLICE = EndpointSliceState(
    "shop", "web-abc12", "web", "IPv6",
    (EndpointPortState("http", "TCP", 8080), EndpointPortState("dns", "UDP", 5353)),
    (SliceEndpointState(("fd00:1::1",), True, True, False, "node-a", "zone-1", ("zone-1",), "shop/web-0"),
     SliceEndpointState(("fd00:1::2", "fd00:1::3"), False, True, True, "node-b", "zone-2", (), "shop/web-1"),
     SliceEndpointState(("fd00:1::4",), False, False, False)))


def roundtrip(obj: StateObject | None, key: StateKey) -> Change:
    wire = change_to_pb(Change(key, obj)).SerializeToString()
    return change_from_pb(pb.Change.FromString(wire))


def test_every_field_survives() -> None:
    for obj in (SERVICE, SLICE):
        # No field is left at its default: a field the codec forgot would come back different.
        assert all(getattr(obj, f.name) != f.default for f in dataclasses.fields(obj))
        assert roundtrip(obj, (obj.kind, obj.key)) == Change((obj.kind, obj.key), obj)


def test_delete_carries_the_key() -> None:
    for obj in (SERVICE, SLICE):
        change = roundtrip(None, (obj.kind, obj.key))
        assert change == Change((obj.kind, "shop/" + obj.name), None)


def test_cache_round_trip_and_the_earlier_json_cache() -> None:
    for obj in (SERVICE, SLICE):
        assert object_from_bytes(object_bytes(obj)) == obj  # a row of state.db's cluster cache
        earlier = {"kind": obj.kind.value, **json.loads(json.dumps(dataclasses.asdict(obj)))}  # a JSON cache line
        assert legacy_reading.object_from_json(earlier) == obj
