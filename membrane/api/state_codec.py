"""Conversion between the pure state objects and the generated protobuf messages.

Imports the generated `state_pb2` (protobuf only, no grpc) so the operator's serving code and
the agent's client share one translation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from membrane.api.state.v1 import state_pb2 as pb
from membrane.api.state_objects import (
    Change,
    EndpointState,
    IdentityState,
    Kind,
    NamedPortState,
    NamespaceState,
    NodeState,
    PolicyState,
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
    if kind is Kind.IDENTITY:
        return IdentityState(int(text))
    if kind is Kind.NODE:
        return NodeState(text)
    return NamespaceState(text)


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
    elif isinstance(obj, NodeState):
        message.node.CopyFrom(pb.Node(name=obj.name, addresses=obj.addresses,
                                      pod_cidr=obj.pod_cidr))
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
    elif which == "node":
        n = message.node
        obj = NodeState(n.name, tuple(n.addresses), n.pod_cidr)
    elif which == "namespace":
        obj = NamespaceState(message.namespace.name, tuple(sorted(message.namespace.labels.items())))
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
