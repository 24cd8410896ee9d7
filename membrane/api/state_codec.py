"""Conversion between the pure state objects and the generated protobuf messages.

Imports the generated `state_pb2` (protobuf only, no grpc) so the operator's serving code and
the agent's client share one translation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from google.protobuf.message import DecodeError

from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state_objects import (
    Change,
    CIDRDenyChunkState,
    CIDRDenyListState,
    EndpointPortState,
    EndpointSliceState,
    EndpointState,
    IdentityState,
    Kind,
    NamedPortState,
    NamespaceState,
    NodeState,
    PacketFilterState,
    PolicyState,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
    StateKey,
    StateObject,
)

# Snapshots are split so one message stays far below gRPC's 4 MiB default limit.
SNAPSHOT_CHUNK = 500


def _key_object(key: StateKey) -> StateObject:
    """An object with only its key fields set (what a DELETE carries)."""
    kind, text = key
    if kind is Kind.ENDPOINT:
        namespace, _, name = text.partition("/")
        return EndpointState(namespace, name)
    if kind is Kind.POLICY:
        namespace, _, name = text.partition("/")
        return PolicyState(namespace, name)
    if kind is Kind.SERVICE:
        namespace, _, name = text.partition("/")
        return ServiceState(namespace, name)
    if kind is Kind.ENDPOINTSLICE:
        namespace, _, name = text.partition("/")
        return EndpointSliceState(namespace, name)
    if kind is Kind.IDENTITY:
        return IdentityState(int(text))
    if kind is Kind.NODE:
        return NodeState(text)
    if kind is Kind.PACKET_FILTER:
        return PacketFilterState(text)
    if kind is Kind.CIDR_DENY_LIST:
        return CIDRDenyListState(text)
    if kind is Kind.CIDR_DENY_CHUNK:
        name, _, bucket = text.rpartition("/")
        return CIDRDenyChunkState(name, int(bucket))
    return NamespaceState(text)


def _service_pb(s: ServiceState) -> pb.Service:
    return pb.Service(
        namespace=s.namespace, name=s.name, type=s.type, cluster_ips=s.cluster_ips,
        ports=[pb.ServicePort(name=p.name, protocol=p.protocol, port=p.port, target_port=p.target_port,
                              node_port=p.node_port) for p in s.ports],
        external_ips=s.external_ips, load_balancer_ips=s.load_balancer_ips, affinity_timeout=s.affinity_timeout,
        external_traffic_local=s.external_traffic_local, internal_traffic_local=s.internal_traffic_local,
        health_check_node_port=s.health_check_node_port)


def _service_of(m: pb.Service) -> ServiceState:
    return ServiceState(
        m.namespace, m.name, m.type, tuple(m.cluster_ips),
        tuple(ServicePortState(p.name, p.protocol, p.port, p.target_port, p.node_port) for p in m.ports),
        tuple(m.external_ips), tuple(m.load_balancer_ips), m.affinity_timeout, m.external_traffic_local,
        m.internal_traffic_local, m.health_check_node_port)


def _slice_pb(s: EndpointSliceState) -> pb.EndpointSlice:
    return pb.EndpointSlice(
        namespace=s.namespace, name=s.name, service=s.service, address_type=s.address_type,
        ports=[pb.EndpointPort(name=p.name, protocol=p.protocol, port=p.port) for p in s.ports],
        endpoints=[pb.SliceEndpoint(addresses=e.addresses, ready=e.ready, serving=e.serving,
                                    terminating=e.terminating, node_name=e.node_name, zone=e.zone,
                                    hint_zones=e.hint_zones, target=e.target) for e in s.endpoints])


def _slice_of(m: pb.EndpointSlice) -> EndpointSliceState:
    return EndpointSliceState(
        m.namespace, m.name, m.service, m.address_type,
        tuple(EndpointPortState(p.name, p.protocol, p.port) for p in m.ports),
        tuple(SliceEndpointState(tuple(e.addresses), e.ready, e.serving, e.terminating, e.node_name, e.zone,
                                 tuple(e.hint_zones), e.target) for e in m.endpoints))


def change_to_pb(change: Change) -> pb.Change:
    obj = change.obj if change.obj is not None else _key_object(change.key)
    message = pb.Change(op=pb.Change.OP_UPSERT if change.obj is not None else pb.Change.OP_DELETE)
    if isinstance(obj, EndpointState):
        message.endpoint.CopyFrom(pb.Endpoint(
            namespace=obj.namespace, name=obj.name, ips=obj.ips, identity=obj.identity,
            node_name=obj.node_name, labels=dict(obj.labels), uid=obj.uid,
            named_ports=[pb.NamedPort(name=p.name, protocol=p.protocol, port=p.port)
                         for p in obj.named_ports]))
    elif isinstance(obj, IdentityState):
        message.identity.CopyFrom(pb.Identity(id=obj.id, labels=obj.labels))
    elif isinstance(obj, PolicyState):
        message.policy.CopyFrom(pb.Policy(namespace=obj.namespace, name=obj.name,
                                          object_json=obj.object_json))
    elif isinstance(obj, ServiceState):
        message.service.CopyFrom(_service_pb(obj))
    elif isinstance(obj, EndpointSliceState):
        message.endpoint_slice.CopyFrom(_slice_pb(obj))
    elif isinstance(obj, NodeState):
        message.node.CopyFrom(pb.Node(name=obj.name, addresses=obj.addresses,
                                      pod_cidr=obj.pod_cidr))
    elif isinstance(obj, PacketFilterState):
        message.packet_filter.CopyFrom(pb.PacketFilter(name=obj.name, generation=obj.generation,
                                                       spec_json=obj.spec_json))
    elif isinstance(obj, CIDRDenyListState):
        message.cidr_deny_list.CopyFrom(pb.CIDRDenyList(name=obj.name, generation=obj.generation,
                                                        cidrs=obj.cidrs, digest=obj.digest))
    elif isinstance(obj, CIDRDenyChunkState):
        message.cidr_deny_chunk.CopyFrom(pb.CIDRDenyChunk(list=obj.list, bucket=obj.bucket, cidrs=obj.cidrs))
    else:
        message.namespace.CopyFrom(pb.Namespace(name=obj.name, labels=dict(obj.labels)))
    return message


def change_from_pb(message: pb.Change) -> Change:
    which = message.WhichOneof("object")
    obj: StateObject
    if which == "endpoint":
        e = message.endpoint
        obj = EndpointState(
            e.namespace, e.name, tuple(e.ips), e.identity, e.node_name,
            tuple(sorted(e.labels.items())),
            tuple(NamedPortState(p.name, p.protocol, p.port) for p in e.named_ports), e.uid)
    elif which == "identity":
        obj = IdentityState(message.identity.id, tuple(message.identity.labels))
    elif which == "policy":
        p = message.policy
        obj = PolicyState(p.namespace, p.name, p.object_json)
    elif which == "service":
        obj = _service_of(message.service)
    elif which == "endpoint_slice":
        obj = _slice_of(message.endpoint_slice)
    elif which == "node":
        n = message.node
        obj = NodeState(n.name, tuple(n.addresses), n.pod_cidr)
    elif which == "namespace":
        obj = NamespaceState(message.namespace.name, tuple(sorted(message.namespace.labels.items())))
    elif which == "packet_filter":
        f = message.packet_filter
        obj = PacketFilterState(f.name, f.generation, f.spec_json)
    elif which == "cidr_deny_list":
        d = message.cidr_deny_list
        obj = CIDRDenyListState(d.name, d.generation, tuple(d.cidrs), d.digest)
    elif which == "cidr_deny_chunk":
        c = message.cidr_deny_chunk
        obj = CIDRDenyChunkState(c.list, c.bucket, tuple(c.cidrs))
    else:
        raise ValueError(f"change without an object: {message!r}")
    key = (obj.kind, obj.key)
    return Change(key, obj if message.op == pb.Change.OP_UPSERT else None)


def snapshot_messages(version: int, stream_id: str,
                      objects: Iterable[StateObject]) -> Iterator[pb.StateUpdate]:
    """A snapshot as one or more messages (all but the last with `more` set)."""
    changes = [change_to_pb(Change((o.kind, o.key), o)) for o in objects]
    chunks = [changes[i:i + SNAPSHOT_CHUNK] for i in range(0, len(changes), SNAPSHOT_CHUNK)] or [[]]
    for index, chunk in enumerate(chunks):
        yield pb.StateUpdate(version=version, stream_id=stream_id, type=pb.StateUpdate.TYPE_SNAPSHOT,
                             more=index < len(chunks) - 1, changes=chunk)


def delta_message(version: int, stream_id: str, changes: Iterable[Change]) -> pb.StateUpdate:
    return pb.StateUpdate(version=version, stream_id=stream_id, type=pb.StateUpdate.TYPE_DELTA,
                          changes=[change_to_pb(c) for c in changes])


# --- encode once, send to many ----------------------------------------------------------------
# A StateUpdate on the wire is its header fields followed by one length-delimited field 5 per
# change; protobuf lets repeated message fields be concatenated. So each change is serialized
# once, when committed, and every update (a delta, a snapshot chunk) sent to any number of
# subscribers is made by joining bytes, never by re-encoding objects.
_CHANGES_TAG = b"\x2a"  # field 5 (changes), wire type 2 (length-delimited)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_change(change: Change) -> bytes:
    """One change as the bytes of a repeated `changes` entry of a StateUpdate (tag included)."""
    body = change_to_pb(change).SerializeToString()
    return _CHANGES_TAG + _varint(len(body)) + body


def update_bytes(version: int, stream_id: str, snapshot: bool, encoded_changes: Iterable[bytes],
                 more: bool = False) -> bytes:
    """A serialized StateUpdate from changes already encoded by `encode_change`."""
    header = pb.StateUpdate(version=version, stream_id=stream_id, more=more,
                            type=pb.StateUpdate.TYPE_SNAPSHOT if snapshot else pb.StateUpdate.TYPE_DELTA)
    return header.SerializeToString() + b"".join(encoded_changes)


def snapshot_chunks(version: int, stream_id: str, encoded_changes: list[bytes],
                    chunk: int = SNAPSHOT_CHUNK) -> list[bytes]:
    """A snapshot as serialized messages (all but the last with `more` set)."""
    parts = [encoded_changes[i:i + chunk] for i in range(0, len(encoded_changes), chunk)] or [[]]
    return [update_bytes(version, stream_id, True, part, more=index < len(parts) - 1)
            for index, part in enumerate(parts)]


# --- at rest (the agent's cluster cache in state.db) ----------------------------------------------
def object_bytes(obj: StateObject) -> bytes:
    """One object as a serialized upsert Change: the cache stores what the wire carries, so a
    kind added to the stream is cached without a format of its own."""
    return change_to_pb(Change((obj.kind, obj.key), obj)).SerializeToString()


def object_from_bytes(body: bytes) -> StateObject:
    """The object `object_bytes` stored; ValueError when the bytes are not one."""
    try:
        change = change_from_pb(pb.Change.FromString(body))
    except (DecodeError, ValueError) as exc:
        raise ValueError(f"not a stored object: {exc}") from None
    if change.obj is None:
        raise ValueError("not a stored object: a deletion")
    return change.obj
