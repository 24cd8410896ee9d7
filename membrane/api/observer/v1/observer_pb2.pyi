from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_FORWARDED: _ClassVar[Verdict]
    VERDICT_DROPPED: _ClassVar[Verdict]

class FlowType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOW_TYPE_UNSPECIFIED: _ClassVar[FlowType]
    FLOW_TYPE_DROP: _ClassVar[FlowType]
    FLOW_TYPE_POLICY_VERDICT: _ClassVar[FlowType]
    FLOW_TYPE_TRACE: _ClassVar[FlowType]

class TrafficDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAFFIC_DIRECTION_UNSPECIFIED: _ClassVar[TrafficDirection]
    TRAFFIC_DIRECTION_INGRESS: _ClassVar[TrafficDirection]
    TRAFFIC_DIRECTION_EGRESS: _ClassVar[TrafficDirection]
VERDICT_UNSPECIFIED: Verdict
VERDICT_FORWARDED: Verdict
VERDICT_DROPPED: Verdict
FLOW_TYPE_UNSPECIFIED: FlowType
FLOW_TYPE_DROP: FlowType
FLOW_TYPE_POLICY_VERDICT: FlowType
FLOW_TYPE_TRACE: FlowType
TRAFFIC_DIRECTION_UNSPECIFIED: TrafficDirection
TRAFFIC_DIRECTION_INGRESS: TrafficDirection
TRAFFIC_DIRECTION_EGRESS: TrafficDirection

class Endpoint(_message.Message):
    __slots__ = ("identity", "identity_name", "namespace", "pod_name", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    identity: int
    identity_name: str
    namespace: str
    pod_name: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, identity: _Optional[int] = ..., identity_name: _Optional[str] = ..., namespace: _Optional[str] = ..., pod_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Flow(_message.Message):
    __slots__ = ("time", "node_name", "type", "trace_event", "verdict", "drop_reason", "direction", "is_reply", "ip_version", "source_ip", "destination_ip", "protocol", "source_port", "destination_port", "tcp_flags", "source", "destination", "policies", "count", "bytes", "ifindex", "endpoint_id", "path", "service", "translation")
    TIME_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TRACE_EVENT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    IS_REPLY_FIELD_NUMBER: _ClassVar[int]
    IP_VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_IP_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    TCP_FLAGS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    IFINDEX_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TRANSLATION_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    node_name: str
    type: FlowType
    trace_event: str
    verdict: Verdict
    drop_reason: str
    direction: TrafficDirection
    is_reply: bool
    ip_version: int
    source_ip: str
    destination_ip: str
    protocol: str
    source_port: int
    destination_port: int
    tcp_flags: _containers.RepeatedScalarFieldContainer[str]
    source: Endpoint
    destination: Endpoint
    policies: _containers.RepeatedScalarFieldContainer[str]
    count: int
    bytes: int
    ifindex: int
    endpoint_id: int
    path: str
    service: str
    translation: str
    def __init__(self, time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., node_name: _Optional[str] = ..., type: _Optional[_Union[FlowType, str]] = ..., trace_event: _Optional[str] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., drop_reason: _Optional[str] = ..., direction: _Optional[_Union[TrafficDirection, str]] = ..., is_reply: bool = ..., ip_version: _Optional[int] = ..., source_ip: _Optional[str] = ..., destination_ip: _Optional[str] = ..., protocol: _Optional[str] = ..., source_port: _Optional[int] = ..., destination_port: _Optional[int] = ..., tcp_flags: _Optional[_Iterable[str]] = ..., source: _Optional[_Union[Endpoint, _Mapping]] = ..., destination: _Optional[_Union[Endpoint, _Mapping]] = ..., policies: _Optional[_Iterable[str]] = ..., count: _Optional[int] = ..., bytes: _Optional[int] = ..., ifindex: _Optional[int] = ..., endpoint_id: _Optional[int] = ..., path: _Optional[str] = ..., service: _Optional[str] = ..., translation: _Optional[str] = ...) -> None: ...

class FlowFilter(_message.Message):
    __slots__ = ("namespace", "source_namespace", "destination_namespace", "pod", "source_pod", "destination_pod", "label", "source_label", "destination_label", "identity", "source_identity", "destination_identity", "ip", "source_ip", "destination_ip", "port", "source_port", "destination_port", "protocol", "verdict", "drop_reason", "direction", "node_name", "type")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    POD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_POD_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_POD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LABEL_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_LABEL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    SOURCE_IP_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_IP_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PORT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    DROP_REASON_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    namespace: _containers.RepeatedScalarFieldContainer[str]
    source_namespace: _containers.RepeatedScalarFieldContainer[str]
    destination_namespace: _containers.RepeatedScalarFieldContainer[str]
    pod: _containers.RepeatedScalarFieldContainer[str]
    source_pod: _containers.RepeatedScalarFieldContainer[str]
    destination_pod: _containers.RepeatedScalarFieldContainer[str]
    label: _containers.RepeatedScalarFieldContainer[str]
    source_label: _containers.RepeatedScalarFieldContainer[str]
    destination_label: _containers.RepeatedScalarFieldContainer[str]
    identity: _containers.RepeatedScalarFieldContainer[int]
    source_identity: _containers.RepeatedScalarFieldContainer[int]
    destination_identity: _containers.RepeatedScalarFieldContainer[int]
    ip: _containers.RepeatedScalarFieldContainer[str]
    source_ip: _containers.RepeatedScalarFieldContainer[str]
    destination_ip: _containers.RepeatedScalarFieldContainer[str]
    port: _containers.RepeatedScalarFieldContainer[int]
    source_port: _containers.RepeatedScalarFieldContainer[int]
    destination_port: _containers.RepeatedScalarFieldContainer[int]
    protocol: _containers.RepeatedScalarFieldContainer[str]
    verdict: _containers.RepeatedScalarFieldContainer[Verdict]
    drop_reason: _containers.RepeatedScalarFieldContainer[str]
    direction: _containers.RepeatedScalarFieldContainer[TrafficDirection]
    node_name: _containers.RepeatedScalarFieldContainer[str]
    type: _containers.RepeatedScalarFieldContainer[FlowType]
    def __init__(self, namespace: _Optional[_Iterable[str]] = ..., source_namespace: _Optional[_Iterable[str]] = ..., destination_namespace: _Optional[_Iterable[str]] = ..., pod: _Optional[_Iterable[str]] = ..., source_pod: _Optional[_Iterable[str]] = ..., destination_pod: _Optional[_Iterable[str]] = ..., label: _Optional[_Iterable[str]] = ..., source_label: _Optional[_Iterable[str]] = ..., destination_label: _Optional[_Iterable[str]] = ..., identity: _Optional[_Iterable[int]] = ..., source_identity: _Optional[_Iterable[int]] = ..., destination_identity: _Optional[_Iterable[int]] = ..., ip: _Optional[_Iterable[str]] = ..., source_ip: _Optional[_Iterable[str]] = ..., destination_ip: _Optional[_Iterable[str]] = ..., port: _Optional[_Iterable[int]] = ..., source_port: _Optional[_Iterable[int]] = ..., destination_port: _Optional[_Iterable[int]] = ..., protocol: _Optional[_Iterable[str]] = ..., verdict: _Optional[_Iterable[_Union[Verdict, str]]] = ..., drop_reason: _Optional[_Iterable[str]] = ..., direction: _Optional[_Iterable[_Union[TrafficDirection, str]]] = ..., node_name: _Optional[_Iterable[str]] = ..., type: _Optional[_Iterable[_Union[FlowType, str]]] = ...) -> None: ...

class GetFlowsRequest(_message.Message):
    __slots__ = ("number", "follow", "since", "until", "whitelist", "blacklist", "batch")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    WHITELIST_FIELD_NUMBER: _ClassVar[int]
    BLACKLIST_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    number: int
    follow: bool
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    whitelist: _containers.RepeatedCompositeFieldContainer[FlowFilter]
    blacklist: _containers.RepeatedCompositeFieldContainer[FlowFilter]
    batch: bool
    def __init__(self, number: _Optional[int] = ..., follow: bool = ..., since: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., whitelist: _Optional[_Iterable[_Union[FlowFilter, _Mapping]]] = ..., blacklist: _Optional[_Iterable[_Union[FlowFilter, _Mapping]]] = ..., batch: bool = ...) -> None: ...

class FlowBatch(_message.Message):
    __slots__ = ("flows",)
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[Flow]
    def __init__(self, flows: _Optional[_Iterable[_Union[Flow, _Mapping]]] = ...) -> None: ...

class LostEvents(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class GetFlowsResponse(_message.Message):
    __slots__ = ("time", "node_name", "flow", "lost_events", "flows")
    TIME_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    FLOW_FIELD_NUMBER: _ClassVar[int]
    LOST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    node_name: str
    flow: Flow
    lost_events: LostEvents
    flows: FlowBatch
    def __init__(self, time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., node_name: _Optional[str] = ..., flow: _Optional[_Union[Flow, _Mapping]] = ..., lost_events: _Optional[_Union[LostEvents, _Mapping]] = ..., flows: _Optional[_Union[FlowBatch, _Mapping]] = ...) -> None: ...

class ServerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerStatusResponse(_message.Message):
    __slots__ = ("num_flows", "max_flows", "seen_flows", "lost_events", "lost_events_by_reason", "uptime_ns", "node_name")
    class LostEventsByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NUM_FLOWS_FIELD_NUMBER: _ClassVar[int]
    MAX_FLOWS_FIELD_NUMBER: _ClassVar[int]
    SEEN_FLOWS_FIELD_NUMBER: _ClassVar[int]
    LOST_EVENTS_FIELD_NUMBER: _ClassVar[int]
    LOST_EVENTS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    UPTIME_NS_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    num_flows: int
    max_flows: int
    seen_flows: int
    lost_events: int
    lost_events_by_reason: _containers.ScalarMap[str, int]
    uptime_ns: int
    node_name: str
    def __init__(self, num_flows: _Optional[int] = ..., max_flows: _Optional[int] = ..., seen_flows: _Optional[int] = ..., lost_events: _Optional[int] = ..., lost_events_by_reason: _Optional[_Mapping[str, int]] = ..., uptime_ns: _Optional[int] = ..., node_name: _Optional[str] = ...) -> None: ...
