from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("node_name", "last_applied_version", "stream_id", "acked_version", "accepts_batches")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    LAST_APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    ACKED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_BATCHES_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    last_applied_version: int
    stream_id: str
    acked_version: int
    accepts_batches: bool
    def __init__(self, node_name: _Optional[str] = ..., last_applied_version: _Optional[int] = ..., stream_id: _Optional[str] = ..., acked_version: _Optional[int] = ..., accepts_batches: bool = ...) -> None: ...

class StateUpdate(_message.Message):
    __slots__ = ("version", "stream_id", "type", "more", "changes", "base_version")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[StateUpdate.Type]
        TYPE_SNAPSHOT: _ClassVar[StateUpdate.Type]
        TYPE_DELTA: _ClassVar[StateUpdate.Type]
    TYPE_UNSPECIFIED: StateUpdate.Type
    TYPE_SNAPSHOT: StateUpdate.Type
    TYPE_DELTA: StateUpdate.Type
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    stream_id: str
    type: StateUpdate.Type
    more: bool
    changes: _containers.RepeatedCompositeFieldContainer[Change]
    base_version: int
    def __init__(self, version: _Optional[int] = ..., stream_id: _Optional[str] = ..., type: _Optional[_Union[StateUpdate.Type, str]] = ..., more: bool = ..., changes: _Optional[_Iterable[_Union[Change, _Mapping]]] = ..., base_version: _Optional[int] = ...) -> None: ...

class Change(_message.Message):
    __slots__ = ("op", "endpoint", "identity", "policy", "node", "namespace", "service", "endpoint_slice", "packet_filter", "cidr_deny_list", "cidr_deny_chunk")
    class Op(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        OP_UNSPECIFIED: _ClassVar[Change.Op]
        OP_UPSERT: _ClassVar[Change.Op]
        OP_DELETE: _ClassVar[Change.Op]
    OP_UNSPECIFIED: Change.Op
    OP_UPSERT: Change.Op
    OP_DELETE: Change.Op
    OP_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_SLICE_FIELD_NUMBER: _ClassVar[int]
    PACKET_FILTER_FIELD_NUMBER: _ClassVar[int]
    CIDR_DENY_LIST_FIELD_NUMBER: _ClassVar[int]
    CIDR_DENY_CHUNK_FIELD_NUMBER: _ClassVar[int]
    op: Change.Op
    endpoint: Endpoint
    identity: Identity
    policy: Policy
    node: Node
    namespace: Namespace
    service: Service
    endpoint_slice: EndpointSlice
    packet_filter: PacketFilter
    cidr_deny_list: CIDRDenyList
    cidr_deny_chunk: CIDRDenyChunk
    def __init__(self, op: _Optional[_Union[Change.Op, str]] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., identity: _Optional[_Union[Identity, _Mapping]] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., node: _Optional[_Union[Node, _Mapping]] = ..., namespace: _Optional[_Union[Namespace, _Mapping]] = ..., service: _Optional[_Union[Service, _Mapping]] = ..., endpoint_slice: _Optional[_Union[EndpointSlice, _Mapping]] = ..., packet_filter: _Optional[_Union[PacketFilter, _Mapping]] = ..., cidr_deny_list: _Optional[_Union[CIDRDenyList, _Mapping]] = ..., cidr_deny_chunk: _Optional[_Union[CIDRDenyChunk, _Mapping]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("namespace", "name", "ips", "identity", "node_name", "labels", "named_ports", "uid")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IPS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NAMED_PORTS_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    ips: _containers.RepeatedScalarFieldContainer[str]
    identity: int
    node_name: str
    labels: _containers.ScalarMap[str, str]
    named_ports: _containers.RepeatedCompositeFieldContainer[NamedPort]
    uid: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., ips: _Optional[_Iterable[str]] = ..., identity: _Optional[int] = ..., node_name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., named_ports: _Optional[_Iterable[_Union[NamedPort, _Mapping]]] = ..., uid: _Optional[str] = ...) -> None: ...

class NamedPort(_message.Message):
    __slots__ = ("name", "protocol", "port")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    protocol: str
    port: int
    def __init__(self, name: _Optional[str] = ..., protocol: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class Identity(_message.Message):
    __slots__ = ("id", "labels")
    ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    id: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("namespace", "name", "object_json")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OBJECT_JSON_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    object_json: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., object_json: _Optional[str] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "addresses", "pod_cidr")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    POD_CIDR_FIELD_NUMBER: _ClassVar[int]
    name: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    pod_cidr: str
    def __init__(self, name: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ..., pod_cidr: _Optional[str] = ...) -> None: ...

class Namespace(_message.Message):
    __slots__ = ("name", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("namespace", "name", "type", "cluster_ips", "ports", "external_ips", "load_balancer_ips", "affinity_timeout", "external_traffic_local", "internal_traffic_local", "health_check_node_port")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_IPS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_IPS_FIELD_NUMBER: _ClassVar[int]
    LOAD_BALANCER_IPS_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_TRAFFIC_LOCAL_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_TRAFFIC_LOCAL_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHECK_NODE_PORT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    type: str
    cluster_ips: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    external_ips: _containers.RepeatedScalarFieldContainer[str]
    load_balancer_ips: _containers.RepeatedScalarFieldContainer[str]
    affinity_timeout: int
    external_traffic_local: bool
    internal_traffic_local: bool
    health_check_node_port: int
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., cluster_ips: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ..., external_ips: _Optional[_Iterable[str]] = ..., load_balancer_ips: _Optional[_Iterable[str]] = ..., affinity_timeout: _Optional[int] = ..., external_traffic_local: bool = ..., internal_traffic_local: bool = ..., health_check_node_port: _Optional[int] = ...) -> None: ...

class ServicePort(_message.Message):
    __slots__ = ("name", "protocol", "port", "target_port", "node_port")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_FIELD_NUMBER: _ClassVar[int]
    NODE_PORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    protocol: str
    port: int
    target_port: str
    node_port: int
    def __init__(self, name: _Optional[str] = ..., protocol: _Optional[str] = ..., port: _Optional[int] = ..., target_port: _Optional[str] = ..., node_port: _Optional[int] = ...) -> None: ...

class EndpointSlice(_message.Message):
    __slots__ = ("namespace", "name", "service", "address_type", "ports", "endpoints")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_TYPE_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    service: str
    address_type: str
    ports: _containers.RepeatedCompositeFieldContainer[EndpointPort]
    endpoints: _containers.RepeatedCompositeFieldContainer[SliceEndpoint]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., service: _Optional[str] = ..., address_type: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[EndpointPort, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[SliceEndpoint, _Mapping]]] = ...) -> None: ...

class EndpointPort(_message.Message):
    __slots__ = ("name", "protocol", "port")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    protocol: str
    port: int
    def __init__(self, name: _Optional[str] = ..., protocol: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class SliceEndpoint(_message.Message):
    __slots__ = ("addresses", "ready", "serving", "terminating", "node_name", "zone", "hint_zones", "target")
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    TERMINATING_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    HINT_ZONES_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    ready: bool
    serving: bool
    terminating: bool
    node_name: str
    zone: str
    hint_zones: _containers.RepeatedScalarFieldContainer[str]
    target: str
    def __init__(self, addresses: _Optional[_Iterable[str]] = ..., ready: bool = ..., serving: bool = ..., terminating: bool = ..., node_name: _Optional[str] = ..., zone: _Optional[str] = ..., hint_zones: _Optional[_Iterable[str]] = ..., target: _Optional[str] = ...) -> None: ...

class PacketFilter(_message.Message):
    __slots__ = ("name", "generation", "spec_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    generation: int
    spec_json: str
    def __init__(self, name: _Optional[str] = ..., generation: _Optional[int] = ..., spec_json: _Optional[str] = ...) -> None: ...

class CIDRDenyList(_message.Message):
    __slots__ = ("name", "generation", "cidrs", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CIDRS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    generation: int
    cidrs: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    def __init__(self, name: _Optional[str] = ..., generation: _Optional[int] = ..., cidrs: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ...) -> None: ...

class CIDRDenyChunk(_message.Message):
    __slots__ = ("list", "bucket", "cidrs")
    LIST_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    CIDRS_FIELD_NUMBER: _ClassVar[int]
    list: str
    bucket: int
    cidrs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, list: _Optional[str] = ..., bucket: _Optional[int] = ..., cidrs: _Optional[_Iterable[str]] = ...) -> None: ...

class AckRequest(_message.Message):
    __slots__ = ("node_name", "version", "stream_id")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    version: int
    stream_id: str
    def __init__(self, node_name: _Optional[str] = ..., version: _Optional[int] = ..., stream_id: _Optional[str] = ...) -> None: ...

class AckResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
