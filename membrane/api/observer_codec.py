"""Conversion between the pure flow types (membrane.flows) and the observer's protobuf messages.

Imports the generated `observer_pb2` (protobuf only, no grpc) so the agent's Observer server and
`membranectl observe` share one translation.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from membrane.api.observer.v1 import observer_pb2 as pb
from membrane.flows import Direction, Endpoint, Flow, FlowFilter, FlowType, Verdict

_VERDICT_TO_PB = {Verdict.FORWARDED: pb.VERDICT_FORWARDED, Verdict.DROPPED: pb.VERDICT_DROPPED}
_VERDICT_FROM_PB = {v: k for k, v in _VERDICT_TO_PB.items()}
_TYPE_TO_PB = {FlowType.DROP: pb.FLOW_TYPE_DROP, FlowType.POLICY_VERDICT: pb.FLOW_TYPE_POLICY_VERDICT,
               FlowType.TRACE: pb.FLOW_TYPE_TRACE}
_TYPE_FROM_PB = {v: k for k, v in _TYPE_TO_PB.items()}
_DIR_TO_PB = {Direction.INGRESS: pb.TRAFFIC_DIRECTION_INGRESS, Direction.EGRESS: pb.TRAFFIC_DIRECTION_EGRESS}
_DIR_FROM_PB = {v: k for k, v in _DIR_TO_PB.items()}

# FlowFilter fields spelled the same in both forms (everything but the enum and node fields).
_PLAIN_FILTER_FIELDS = tuple(
    name for name in FlowFilter.model_fields if name not in ("verdict", "direction", "type", "node"))


def timestamp(when: datetime) -> Timestamp:
    ts = Timestamp()
    micros = round(when.timestamp() * 1_000_000)  # via integers: float seconds lose nanoseconds
    ts.seconds, ts.nanos = divmod(micros, 1_000_000)
    ts.nanos *= 1000
    return ts


def from_timestamp(ts: Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds, tz=UTC).replace(microsecond=ts.nanos // 1000)


def endpoint_to_pb(ep: Endpoint, out: pb.Endpoint) -> None:
    out.identity = ep.identity
    out.identity_name = ep.identity_name
    out.namespace = ep.namespace
    out.pod_name = ep.pod
    if ep.labels:
        out.labels.update(ep.labels)


def endpoint_from_pb(msg: pb.Endpoint) -> Endpoint:
    # model_construct: protobuf already typed every field; validation would double the cost
    return Endpoint.model_construct(identity=msg.identity, identity_name=msg.identity_name, namespace=msg.namespace,
                    pod=msg.pod_name, labels=dict(msg.labels))


def flow_to_pb(flow: Flow) -> pb.Flow:
    msg = pb.Flow(
        node_name=flow.node, type=_TYPE_TO_PB[flow.type], trace_event=flow.trace_event,
        verdict=_VERDICT_TO_PB[flow.verdict], drop_reason=flow.drop_reason, direction=_DIR_TO_PB[flow.direction],
        is_reply=flow.is_reply, ip_version=flow.ip_version, source_ip=flow.source_ip,
        destination_ip=flow.destination_ip, protocol=flow.protocol, source_port=flow.source_port,
        destination_port=flow.destination_port, tcp_flags=flow.tcp_flags, policies=flow.policies,
        count=flow.count, bytes=flow.bytes, ifindex=flow.ifindex, endpoint_id=flow.endpoint_id, path=flow.path,
        service=flow.service, translation=flow.translation,
    )
    msg.time.CopyFrom(timestamp(flow.time))
    endpoint_to_pb(flow.source, msg.source)
    endpoint_to_pb(flow.destination, msg.destination)
    return msg


def flow_from_pb(msg: pb.Flow) -> Flow:
    return Flow.model_construct(
        time=from_timestamp(msg.time), node=msg.node_name, type=_TYPE_FROM_PB.get(msg.type, FlowType.TRACE),
        trace_event=msg.trace_event, verdict=_VERDICT_FROM_PB.get(msg.verdict, Verdict.FORWARDED),
        drop_reason=msg.drop_reason, direction=_DIR_FROM_PB.get(msg.direction, Direction.INGRESS),
        is_reply=msg.is_reply, ip_version=msg.ip_version or 4, source_ip=msg.source_ip,
        destination_ip=msg.destination_ip, protocol=msg.protocol, source_port=msg.source_port,
        destination_port=msg.destination_port, tcp_flags=tuple(msg.tcp_flags),
        source=endpoint_from_pb(msg.source), destination=endpoint_from_pb(msg.destination),
        policies=tuple(msg.policies), count=msg.count, bytes=msg.bytes, ifindex=msg.ifindex,
        endpoint_id=msg.endpoint_id, path=msg.path, service=msg.service, translation=msg.translation,
    )


def filter_to_pb(flt: FlowFilter) -> pb.FlowFilter:
    msg = pb.FlowFilter(**{name: getattr(flt, name) for name in _PLAIN_FILTER_FIELDS})
    msg.verdict.extend(_VERDICT_TO_PB[v] for v in flt.verdict)
    msg.direction.extend(_DIR_TO_PB[d] for d in flt.direction)
    msg.type.extend(_TYPE_TO_PB[t] for t in flt.type)
    msg.node_name.extend(flt.node)
    return msg


class UnknownEnumInFilter(ValueError):
    """A filter names a verdict/direction/type this side does not know: matching it against
    nothing would silently widen a deny-list, so it is refused."""


def filter_from_pb(msg: pb.FlowFilter) -> FlowFilter:
    try:
        return FlowFilter(
            **{name: list(getattr(msg, name)) for name in _PLAIN_FILTER_FIELDS},
            verdict=[_VERDICT_FROM_PB[v] for v in msg.verdict],
            direction=[_DIR_FROM_PB[d] for d in msg.direction],
            type=[_TYPE_FROM_PB[t] for t in msg.type],
            node=list(msg.node_name),
        )
    except KeyError as exc:
        raise UnknownEnumInFilter(f"unknown enum value {exc.args[0]} in flow filter") from exc


def request_to_pb(number: int = 0, follow: bool = False, since: datetime | None = None,
                  until: datetime | None = None, allow: Sequence[FlowFilter] = (),
                  deny: Sequence[FlowFilter] = (), batch: bool = False) -> pb.GetFlowsRequest:
    msg = pb.GetFlowsRequest(number=number, follow=follow, whitelist=[filter_to_pb(f) for f in allow],
                             blacklist=[filter_to_pb(f) for f in deny], batch=batch)
    if since is not None:
        msg.since.CopyFrom(timestamp(since))
    if until is not None:
        msg.until.CopyFrom(timestamp(until))
    return msg


def request_times(msg: pb.GetFlowsRequest) -> tuple[datetime | None, datetime | None]:
    since = from_timestamp(msg.since) if msg.HasField("since") else None
    until = from_timestamp(msg.until) if msg.HasField("until") else None
    return since, until
