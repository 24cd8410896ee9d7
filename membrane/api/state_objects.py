"""What the state stream carries, in pure form (no protobuf, no grpc).

Every object has a `key` unique within its kind; a `StateKey` (kind, key) is unique across the
whole state. Objects are frozen and comparable, so the operator can diff desired against last
sent state with `==` and agents can use them as dictionary values directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    # Order matters for snapshots and deltas: an agent applying changes in this order never
    # sees an endpoint whose identity or node it does not know yet.
    NAMESPACE = "namespace"
    NODE = "node"
    IDENTITY = "identity"
    ENDPOINT = "endpoint"
    SERVICE = "service"
    ENDPOINTSLICE = "endpointslice"
    POLICY = "policy"
    PACKET_FILTER = "packetfilter"
    CIDR_DENY_LIST = "cidrdenylist"
    CIDR_DENY_CHUNK = "cidrdenychunk"


KIND_ORDER = {kind: index for index, kind in enumerate(Kind)}


def _frozen_map(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


@dataclass(frozen=True)
class NamespaceState:
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    kind = Kind.NAMESPACE

    @property
    def key(self) -> str:
        return self.name

    @classmethod
    def of(cls, name: str, labels: Mapping[str, str]) -> NamespaceState:
        return cls(name, _frozen_map(labels))


@dataclass(frozen=True)
class NodeState:
    name: str
    addresses: tuple[str, ...] = ()
    pod_cidr: str = ""

    kind = Kind.NODE

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class IdentityState:
    id: int
    labels: tuple[str, ...] = ()  # source-prefixed strings, sorted (LabelSet.to_strings())

    kind = Kind.IDENTITY

    @property
    def key(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class NamedPortState:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True)
class EndpointState:
    namespace: str
    name: str
    ips: tuple[str, ...] = ()
    identity: int = 0
    node_name: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    named_ports: tuple[NamedPortState, ...] = ()
    uid: str = ""

    kind = Kind.ENDPOINT

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PolicyState:
    namespace: str
    name: str
    object_json: str = ""  # canonical JSON (sorted keys) so equal policies compare equal

    kind = Kind.POLICY

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServicePortState:
    name: str  # "" for the one unnamed port of a service
    protocol: str  # TCP | UDP | SCTP
    port: int
    target_port: str = ""  # a number as text, or a container port's name ("": same as port)
    node_port: int = 0  # 0: none (ClusterIP services, allocateLoadBalancerNodePorts: false)


@dataclass(frozen=True)
class ServiceState:
    """A v1 Service as the datapath needs it. `cluster_ips` is empty for a headless service
    (clusterIP None) and for ExternalName: those get no frontends."""

    namespace: str
    name: str
    type: str = "ClusterIP"  # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ips: tuple[str, ...] = ()
    ports: tuple[ServicePortState, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip
    affinity_timeout: int = 0  # sessionAffinity ClientIP: its timeoutSeconds; 0: no affinity
    external_traffic_local: bool = False  # externalTrafficPolicy: Local
    internal_traffic_local: bool = False  # internalTrafficPolicy: Local
    health_check_node_port: int = 0

    kind = Kind.SERVICE

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class EndpointPortState:
    name: str  # the service port's name ("" when unnamed)
    protocol: str
    port: int  # the target port resolved for this slice's endpoints (0: unset, unusable)


@dataclass(frozen=True)
class SliceEndpointState:
    """One endpoint of a slice, with the API's unset conditions already defaulted as the API
    documents them: ready unset = true, serving unset = true, terminating unset = false."""

    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""
    hint_zones: tuple[str, ...] = ()  # hints.forZones[].name
    target: str = ""  # targetRef of a Pod: "namespace/name"


@dataclass(frozen=True)
class EndpointSliceState:
    namespace: str
    name: str
    service: str = ""  # label kubernetes.io/service-name ("": belongs to no service)
    address_type: str = "IPv4"  # IPv4 | IPv6 | FQDN
    ports: tuple[EndpointPortState, ...] = ()
    endpoints: tuple[SliceEndpointState, ...] = ()

    kind = Kind.ENDPOINTSLICE

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PacketFilterState:
    """A valid PacketFilter (cluster-scoped): its spec as canonical JSON (membrane/
    prefilter_objects.canonical_spec, sorted keys) and the generation that spec is."""

    name: str
    generation: int = 0
    spec_json: str = ""

    kind = Kind.PACKET_FILTER

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class CIDRDenyListState:
    """A valid CIDRDenyList (cluster-scoped). The operator streams its prefixes in
    `CIDRDenyChunkState`s and this record as the list's head: its generation and a digest of the
    whole contents, so each edit is one small version the status counts acks of. `cidrs` is only
    set by an operator from before chunking (a cached record: agents read it as one more chunk)."""

    name: str
    generation: int = 0
    cidrs: tuple[str, ...] = ()
    digest: str = ""

    kind = Kind.CIDR_DENY_LIST

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True)
class CIDRDenyChunkState:
    """The prefixes of one CIDRDenyList that hash into one bucket (membrane/prefilter_chunking.py):
    a one-prefix edit changes one chunk, so it streams and converts as one small record."""

    list: str
    bucket: int
    cidrs: tuple[str, ...] = ()

    kind = Kind.CIDR_DENY_CHUNK

    @property
    def key(self) -> str:
        return f"{self.list}/{self.bucket}"


StateObject = (NamespaceState | NodeState | IdentityState | EndpointState | ServiceState | EndpointSliceState
               | PolicyState | PacketFilterState | CIDRDenyListState
               | CIDRDenyChunkState)
StateKey = tuple[Kind, str]


def sort_key(key: StateKey) -> tuple[int, str]:
    return (KIND_ORDER[key[0]], key[1])


@dataclass(frozen=True)
class Change:
    """An upsert carries the whole object; a delete carries the object's key only."""

    key: StateKey
    obj: StateObject | None  # None: delete


@dataclass
class StateUpdate:
    """One decoded, complete update (snapshot chunks already joined by the client)."""

    version: int
    stream_id: str
    snapshot: bool
    changes: list[Change] = field(default_factory=list)
    # A delta goes from `base_version` to `version`: version-1, or older for a batch of several
    # versions a lagging subscriber got in one message.
    base_version: int = -1

    def __post_init__(self) -> None:
        if self.base_version < 0:
            self.base_version = 0 if self.snapshot else self.version - 1


def apply_update(state: dict[StateKey, StateObject], update: StateUpdate) -> None:
    """Apply an update to a key -> object mapping in place (what a simple agent does)."""
    if update.snapshot:
        state.clear()
    for change in update.changes:
        if change.obj is None:
            state.pop(change.key, None)
        else:
            state[change.key] = change.obj
