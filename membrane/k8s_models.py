"""Kubernetes-format objects membrane consumes: Namespace, Node, Pod, NetworkPolicy (pure);
Service and EndpointSlice live in membrane/service_models.py, dispatched from here.

Pydantic v2 models that accept the JSON/YAML the API server (or `membranectl apply -f`)
produces: camelCase aliases, snake_case Python names (`populate_by_name`), unknown fields
ignored so newer API servers do not break us. Validation mirrors the API server's rules so
standalone mode rejects what a real cluster would reject, with errors naming the field path
(`spec.ingress[0].from[1].ipBlock.except[0]`) and the reason. `parse_object` dispatches on
`kind`; everything else in membrane refers to objects through `ObjectRef`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

# Re-exported: these were defined here before membrane/k8s_meta.py, and are imported from here.
from membrane.k8s_meta import DEFAULT_NAMESPACE as DEFAULT_NAMESPACE
from membrane.k8s_meta import IPNetwork as IPNetwork
from membrane.k8s_meta import Model as _Model
from membrane.k8s_meta import ObjectMeta as ObjectMeta
from membrane.k8s_meta import ObjectRef as ObjectRef
from membrane.k8s_meta import Protocol as Protocol
from membrane.k8s_meta import StrMap as StrMap
from membrane.k8s_meta import named_as_dns_subdomain, none_as_empty_list, raise_errors
from membrane.labels import (
    dns_label_errors,
    label_errors,
    label_key_errors,
    label_value_errors,
    port_name_errors,
    shown,
)
from membrane.service_models import EndpointSlice, Service

if TYPE_CHECKING:
    from membrane.prefilter_objects import PrefilterObject

PolicyType = Literal["Ingress", "Egress"]
Operator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


# --- label selectors -----------------------------------------------------------------------


class LabelSelectorRequirement(_Model):
    key: str
    operator: Operator
    values: Annotated[list[str], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list
    )

    @field_validator("key")
    @classmethod
    def _check_key(cls, key: str) -> str:
        raise_errors(label_key_errors(key))
        return key

    @model_validator(mode="after")
    def _check_values(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"values: must be non-empty when operator is {self.operator}")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"values: must be empty when operator is {self.operator}")
        errors = [
            f"values[{i}] {shown(str(value))}: {reason}"
            for i, value in enumerate(self.values)
            for reason in label_value_errors(value)
        ]
        raise_errors(errors)
        return self


class LabelSelector(_Model):
    """`{}` selects everything; a missing (None) selector is decided by its context."""

    match_labels: StrMap = Field(default_factory=dict)
    match_expressions: Annotated[
        list[LabelSelectorRequirement], BeforeValidator(none_as_empty_list)
    ] = Field(default_factory=list)

    @field_validator("match_labels")
    @classmethod
    def _check_match_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        raise_errors(label_errors(labels))
        return labels


# --- Namespace -----------------------------------------------------------------------------


class Namespace(_Model):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Namespace"] = "Namespace"
    metadata: ObjectMeta

    @field_validator("metadata")
    @classmethod
    def _check_name(cls, metadata: ObjectMeta) -> ObjectMeta:
        if not metadata.name:
            raise ValueError("name: required")
        raise_errors([f"name: {shown(str(metadata.name))} {r}" for r in dns_label_errors(metadata.name)][:1])
        return metadata

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("", self.metadata.name)


# --- Pod -----------------------------------------------------------------------------------


class ContainerPort(_Model):
    name: str | None = None
    container_port: int
    protocol: Protocol = "TCP"
    host_port: int | None = None
    host_ip: str | None = Field(default=None, alias="hostIP")

    @field_validator("container_port")
    @classmethod
    def _check_port(cls, port: int) -> int:
        if not 1 <= port <= 65535:
            raise ValueError(f"{port} must be between 1 and 65535, inclusive")
        return port

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        if name is not None:
            raise_errors([f"{shown(str(name))} {reason}" for reason in port_name_errors(name)])
        return name


class Container(_Model):
    name: str
    ports: Annotated[list[ContainerPort], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list
    )
    restart_policy: str | None = None

    @field_validator("ports")
    @classmethod
    def _unique_names(cls, ports: list[ContainerPort]) -> list[ContainerPort]:
        seen: set[str] = set()
        for i, port in enumerate(ports):
            if port.name is not None:
                if port.name in seen:
                    raise ValueError(f"[{i}].name: duplicate port name {shown(str(port.name))}")
                seen.add(port.name)
        return ports


class PodSpec(_Model):
    containers: Annotated[list[Container], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list
    )
    init_containers: Annotated[list[Container], BeforeValidator(none_as_empty_list)] = (
        Field(default_factory=list)
    )
    host_network: bool = False
    node_name: str | None = None
    hostname: str | None = None  # with subdomain: an EndpointSlice endpoint's hostname
    subdomain: str | None = None


class PodIP(_Model):
    ip: str

    @field_validator("ip")
    @classmethod
    def _check_ip(cls, ip: str) -> str:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"{shown(str(ip))} is not a valid IP address") from None
        return ip


class PodCondition(_Model):
    type: str
    status: str


class PodStatus(_Model):
    phase: str | None = None
    # The Ready condition: what a Service's EndpointSlices call ready/serving.
    conditions: Annotated[list[PodCondition], BeforeValidator(none_as_empty_list)] = Field(default_factory=list)
    pod_ip: str | None = Field(default=None, alias="podIP")
    pod_ips: Annotated[list[PodIP], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list, alias="podIPs"
    )
    host_ip: str | None = Field(default=None, alias="hostIP")

    @field_validator("pod_ip")
    @classmethod
    def _check_ip(cls, ip: str | None) -> str | None:
        if ip:
            PodIP._check_ip(ip)
        return ip or None


@dataclass(frozen=True, order=True)
class NamedPort:
    """A container port with a name: what a named port in a policy resolves to."""

    name: str
    protocol: str
    port: int


class Pod(_Model):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Pod"] = "Pod"
    metadata: ObjectMeta
    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus = Field(default_factory=PodStatus)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.metadata.namespace or DEFAULT_NAMESPACE, self.metadata.name)

    @property
    def ips(self) -> tuple[str, ...]:
        """podIP first, then any other podIPs (dual stack), without duplicates."""
        ips = [self.status.pod_ip] if self.status.pod_ip else []
        ips += [entry.ip for entry in self.status.pod_ips]
        return tuple(dict.fromkeys(ips))

    def named_ports(self) -> tuple[NamedPort, ...]:
        """Named ports of app containers and of sidecars (init containers that keep running)."""
        containers = list(self.spec.containers) + [
            c for c in self.spec.init_containers if c.restart_policy == "Always"
        ]
        return tuple(
            sorted(
                NamedPort(port.name, port.protocol, port.container_port)
                for container in containers
                for port in container.ports
                if port.name
            )
        )


# --- Node ----------------------------------------------------------------------------------

# Which of a Node's addresses carry its tunnel traffic, in order (as the operator's NodeState).
_NODE_ADDRESS_ORDER = {"InternalIP": 0, "ExternalIP": 1}


class NodeAddress(_Model):
    type: str = ""
    address: str

    @field_validator("address")
    @classmethod
    def _check_address(cls, address: str) -> str:
        return PodIP._check_ip(address)


class NodeSpec(_Model):
    pod_cidr: str | None = Field(default=None, alias="podCIDR")
    pod_cidrs: Annotated[list[str], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list, alias="podCIDRs"
    )

    @field_validator("pod_cidr")
    @classmethod
    def _check_cidr(cls, cidr: str | None) -> str | None:
        if cidr:
            _network(cidr)
        return cidr or None

    @field_validator("pod_cidrs")
    @classmethod
    def _check_cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            _network(cidr)
        return cidrs


class NodeStatus(_Model):
    addresses: Annotated[list[NodeAddress], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list
    )


class Node(_Model):
    """A node of the cluster: standalone mode learns the other nodes' addresses (the overlay's
    tunnel endpoints and peers) and pod CIDRs from these, as Kubernetes mode does from the
    operator's stream."""

    api_version: Literal["v1"] = "v1"
    kind: Literal["Node"] = "Node"
    metadata: ObjectMeta
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)

    @field_validator("metadata")
    @classmethod
    def _check_name(cls, metadata: ObjectMeta) -> ObjectMeta:
        return named_as_dns_subdomain(metadata)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("", self.metadata.name)

    @property
    def tunnel_addresses(self) -> tuple[str, ...]:
        """InternalIP addresses first, then ExternalIP (other types are not the node's own)."""
        ordered = sorted(self.status.addresses, key=lambda a: _NODE_ADDRESS_ORDER.get(a.type, 9))
        return tuple(a.address for a in ordered if a.type in _NODE_ADDRESS_ORDER)

    @property
    def pod_cidr_list(self) -> tuple[str, ...]:
        """spec.podCIDR first, then podCIDRs (dual stack), without duplicates."""
        return tuple(dict.fromkeys(([self.spec.pod_cidr] if self.spec.pod_cidr else []) + self.spec.pod_cidrs))


# --- NetworkPolicy -------------------------------------------------------------------------


def _network(text: str) -> IPNetwork:
    try:
        # strict=False: the API server (Go ParseCIDR) accepts host bits and masks them.
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{shown(str(text))} is not a valid CIDR (want e.g. 10.0.0.0/8)") from None


class IPBlock(_Model):
    cidr: str
    except_: Annotated[list[str], BeforeValidator(none_as_empty_list)] = Field(
        default_factory=list, alias="except"
    )

    @field_validator("cidr")
    @classmethod
    def _check_cidr(cls, cidr: str) -> str:
        _network(cidr)
        return cidr

    @model_validator(mode="after")
    def _check_except(self) -> IPBlock:
        outer = self.network
        for i, text in enumerate(self.except_):
            try:
                inner = _network(text)
            except ValueError as exc:
                raise ValueError(f"except[{i}]: {exc}") from None
            if (
                inner.version != outer.version
                or not inner.subnet_of(outer)  # type: ignore[arg-type]  # same IP version, checked just before
                or inner.prefixlen <= outer.prefixlen
            ):
                raise ValueError(
                    f"except[{i}]: {shown(str(text))} must be a strict subset of cidr {shown(str(self.cidr))}"
                )
        return self

    @property
    def network(self) -> IPNetwork:
        return _network(self.cidr)

    @property
    def except_networks(self) -> tuple[IPNetwork, ...]:
        return tuple(_network(text) for text in self.except_)


class NetworkPolicyPeer(_Model):
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    @model_validator(mode="after")
    def _check_one_kind(self) -> NetworkPolicyPeer:
        selectors = self.pod_selector is not None or self.namespace_selector is not None
        if self.ip_block is not None and selectors:
            raise ValueError(
                "ipBlock: may not be combined with podSelector or namespaceSelector"
            )
        if self.ip_block is None and not selectors:
            raise ValueError(
                "must specify a peer: podSelector, namespaceSelector and/or ipBlock"
            )
        return self


class NetworkPolicyPort(_Model):
    # The API server defaults a missing protocol to TCP; so do we.
    protocol: Protocol = "TCP"
    port: StrictInt | StrictStr | None = None
    end_port: StrictInt | None = None

    @field_validator("port")
    @classmethod
    def _check_port(cls, port: int | str | None) -> int | str | None:
        if isinstance(port, int) and not 1 <= port <= 65535:
            raise ValueError(f"{port} must be between 1 and 65535, inclusive")
        if isinstance(port, str):
            raise_errors([f"named port {shown(str(port))} {reason}" for reason in port_name_errors(port)])
        return port

    @model_validator(mode="after")
    def _check_end_port(self) -> NetworkPolicyPort:
        if self.end_port is None:
            return self
        if self.port is None:
            raise ValueError("endPort: may not be specified when port is not specified")
        if isinstance(self.port, str):
            raise ValueError("endPort: may not be specified when port is a named port")
        if not 1 <= self.end_port <= 65535:
            raise ValueError(f"endPort: {self.end_port} must be between 1 and 65535, inclusive")
        if self.end_port < self.port:
            raise ValueError(
                f"endPort: {self.end_port} must be greater than or equal to port {self.port}"
            )
        return self


_Peers = Annotated[list[NetworkPolicyPeer], BeforeValidator(none_as_empty_list)]
_Ports = Annotated[list[NetworkPolicyPort], BeforeValidator(none_as_empty_list)]


class NetworkPolicyIngressRule(_Model):
    """Empty `from` = from every source; empty `ports` = every port of every protocol."""

    from_: _Peers = Field(default_factory=list, alias="from")
    ports: _Ports = Field(default_factory=list)


class NetworkPolicyEgressRule(_Model):
    """Empty `to` = to every destination; empty `ports` = every port of every protocol."""

    to: _Peers = Field(default_factory=list)
    ports: _Ports = Field(default_factory=list)


class NetworkPolicySpec(_Model):
    # The Go type has no omitempty/pointer: a missing podSelector decodes as {} (all pods).
    pod_selector: LabelSelector = Field(default_factory=LabelSelector)
    ingress: list[NetworkPolicyIngressRule] | None = None
    egress: list[NetworkPolicyEgressRule] | None = None
    policy_types: list[PolicyType] | None = None

    @field_validator("policy_types")
    @classmethod
    def _check_types(cls, types: list[PolicyType] | None) -> list[PolicyType] | None:
        if types is not None and len(set(types)) != len(types):
            raise ValueError(f"duplicate values in {types}")
        return types

    def effective_policy_types(self) -> tuple[PolicyType, ...]:
        """API-server defaulting: Ingress always, Egress when there are egress rules."""
        if self.policy_types is not None:
            return tuple(self.policy_types)
        if self.egress:
            return ("Ingress", "Egress")
        return ("Ingress",)


class NetworkPolicy(_Model):
    api_version: Literal["networking.k8s.io/v1"] = "networking.k8s.io/v1"
    kind: Literal["NetworkPolicy"] = "NetworkPolicy"
    metadata: ObjectMeta
    spec: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)

    @field_validator("metadata")
    @classmethod
    def _check_name(cls, metadata: ObjectMeta) -> ObjectMeta:
        return named_as_dns_subdomain(metadata)

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.metadata.namespace or DEFAULT_NAMESPACE, self.metadata.name)


# --- parsing -------------------------------------------------------------------------------

KubeObject = Namespace | Node | Pod | NetworkPolicy | Service | EndpointSlice
# membrane.io's own kinds, checked against their CRD schema (membrane/prefilter_objects.py).
PREFILTER_KINDS = ("PacketFilter", "CIDRDenyList")

_KINDS: dict[str, tuple[str, type[KubeObject]]] = {
    "Namespace": ("v1", Namespace),
    "Node": ("v1", Node),
    "Pod": ("v1", Pod),
    "NetworkPolicy": ("networking.k8s.io/v1", NetworkPolicy),
    "Service": ("v1", Service),
    "EndpointSlice": ("discovery.k8s.io/v1", EndpointSlice),
}


@dataclass(frozen=True)
class FieldError:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ObjectValidationError(ValueError):
    """An object the API server would reject; `errors` lists (field path, reason)."""

    def __init__(self, kind: str, name: str, errors: list[FieldError]) -> None:
        self.kind = kind
        self.name = name
        self.errors = errors
        what = f"{kind} {shown(name)}" if name else kind or "object"
        super().__init__(f"invalid {what}: " + "; ".join(str(e) for e in errors))


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _reason(message: str) -> str:
    # Our validators raise ValueError; pydantic prefixes "Value error, " which adds nothing.
    return message.removeprefix("Value error, ")


def _field_errors(exc: ValidationError) -> list[FieldError]:
    errors: list[FieldError] = []
    for error in exc.errors():
        path = _path(tuple(error["loc"]))
        reason = _reason(error["msg"])
        # Model-level checks report "field: reason"; fold the field into the path.
        head, sep, rest = reason.partition(": ")
        if sep and head and " " not in head and "'" not in head:
            path = f"{path}.{head}" if path and not head.startswith("[") else path + head
            reason = rest
        errors.append(FieldError(path, reason))
    return errors


def parse_object(data: Mapping[str, Any]) -> KubeObject | PrefilterObject:
    """Validate a Kubernetes-format dict into its model, dispatching on `kind`."""
    if not isinstance(data, Mapping):
        raise ObjectValidationError("", "", [FieldError("", "object must be a mapping")])
    kind = data.get("kind")
    if kind in PREFILTER_KINDS:
        from membrane.prefilter_checking import parse_prefilter_object  # built on this module

        return parse_prefilter_object(data)
    metadata = data.get("metadata")
    name = str(metadata.get("name", "")) if isinstance(metadata, Mapping) else ""
    if isinstance(metadata, Mapping) and metadata.get("namespace") and name:
        name = f"{metadata['namespace']}/{name}"
    if not isinstance(kind, str) or kind not in _KINDS:
        known = ", ".join(sorted((*_KINDS, *PREFILTER_KINDS)))
        reason = "required" if kind is None else f"unknown kind {shown(str(kind))} (supported: {known})"
        raise ObjectValidationError(str(kind or ""), name, [FieldError("kind", reason)])
    api_version, model = _KINDS[kind]
    if data.get("apiVersion", api_version) != api_version:
        raise ObjectValidationError(
            kind,
            name,
            [FieldError("apiVersion", f"{kind} must be {shown(str(api_version))}, got {shown(str(data['apiVersion']))}")],
        )
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ObjectValidationError(kind, name, _field_errors(exc)) from None
