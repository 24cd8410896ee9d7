"""Kubernetes-format Service (`v1`) and EndpointSlice (`discovery.k8s.io/v1`) models (pure).

In the style of membrane/k8s_models.py (which dispatches `parse_object` to these): camelCase
aliases, the API server's validation rules so standalone mode refuses what a cluster would
(`spec.ports[1].name: required when a service has several ports`), unknown fields left to the
strict check of what users apply (membrane/strict_fields.py, from Kubernetes' own schemas).

What a cluster's API server allocates (cluster IPs, node ports) nobody allocates in standalone
mode: `Service.unallocated()` names what a standalone Service must state itself.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, StrictInt, StrictStr, field_validator, model_validator

from membrane.k8s_meta import (
    DEFAULT_NAMESPACE,
    Model,
    ObjectMeta,
    ObjectRef,
    Protocol,
    StrMap,
    named_as_dns_subdomain,
    none_as_empty,
    none_as_empty_list,
    raise_errors,
)
from membrane.labels import dns_label_errors, dns_subdomain_errors, label_errors, port_name_errors, shown

ServiceType = Literal["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]
TrafficPolicy = Literal["Cluster", "Local"]
IPFamily = Literal["IPv4", "IPv6"]
AddressType = Literal["IPv4", "IPv6", "FQDN"]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
ZONE_LABEL = "topology.kubernetes.io/zone"
MAX_AFFINITY_TIMEOUT = 86400
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_SLICE_ENDPOINTS = 1000
MAX_SLICE_PORTS = 100
MAX_ENDPOINT_ADDRESSES = 100
MAX_ZONE_HINTS = 8
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

_List = Annotated[list[str], BeforeValidator(none_as_empty_list)]


def ip_errors(text: str, what: str = "IP address") -> list[str]:
    """A valid address that is no special address (as the API server's ValidateNonSpecialIP)."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return [f"{shown(str(text))} must be a valid {what}"]
    if ip.is_unspecified:
        return [f"{shown(text)} may not be unspecified (0.0.0.0 or ::)"]
    if ip.is_loopback:
        return [f"{shown(text)} may not be in the loopback range (127.0.0.0/8, ::1/128)"]
    if ip.is_link_local:
        return [f"{shown(text)} may not be in the link-local range (169.254.0.0/16, fe80::/10)"]
    if ip.is_multicast:
        return [f"{shown(text)} may not be a multicast address"]
    return []


def _port_errors(port: int) -> list[str]:
    return [] if 1 <= port <= 65535 else [f"{port} must be between 1 and 65535, inclusive"]


def _family(text: str) -> str:
    return "IPv6" if ":" in text else "IPv4"


# --- Service -------------------------------------------------------------------------------


class ServicePort(Model):
    name: str = ""
    protocol: Protocol = "TCP"
    app_protocol: str | None = None
    port: StrictInt
    target_port: StrictInt | StrictStr | None = None
    node_port: StrictInt | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if name:
            raise_errors([f"{shown(name)} {r}" for r in dns_label_errors(name)][:1])
        return name

    @field_validator("port")
    @classmethod
    def _check_port(cls, port: int) -> int:
        raise_errors(_port_errors(port))
        return port

    @field_validator("node_port")
    @classmethod
    def _check_node_port(cls, port: int | None) -> int | None:
        if port:
            raise_errors(_port_errors(port))
        return port or None

    @field_validator("target_port")
    @classmethod
    def _check_target_port(cls, target: int | str | None) -> int | str | None:
        if isinstance(target, int):
            if target == 0:
                return None  # unset: the API server defaults it to `port`
            raise_errors(_port_errors(target))
        elif isinstance(target, str):  # a name (as the API server, "8080" as a string is a bad name)
            raise_errors([f"{shown(target)} {r}" for r in port_name_errors(target)])
        return target

    @property
    def target(self) -> int | str:
        """The target port with the API server's default (the service port)."""
        return self.target_port if self.target_port is not None else self.port


class ClientIPConfig(Model):
    timeout_seconds: StrictInt | None = None

    @field_validator("timeout_seconds")
    @classmethod
    def _check_timeout(cls, seconds: int | None) -> int | None:
        if seconds is not None and not 0 < seconds <= MAX_AFFINITY_TIMEOUT:
            raise ValueError(f"{seconds} must be greater than 0 and less than or equal to {MAX_AFFINITY_TIMEOUT}")
        return seconds


class SessionAffinityConfig(Model):
    client_ip: ClientIPConfig | None = Field(default=None, alias="clientIP")


class ServiceSpec(Model):
    type: ServiceType = "ClusterIP"
    selector: StrMap | None = None
    ports: Annotated[list[ServicePort], BeforeValidator(none_as_empty_list)] = Field(default_factory=list)
    cluster_ip: str | None = Field(default=None, alias="clusterIP")
    cluster_ips: _List = Field(default_factory=list, alias="clusterIPs")
    external_ips: _List = Field(default_factory=list, alias="externalIPs")
    external_name: str | None = None
    session_affinity: Literal["None", "ClientIP"] = "None"
    session_affinity_config: SessionAffinityConfig | None = None
    external_traffic_policy: TrafficPolicy | None = None
    internal_traffic_policy: TrafficPolicy | None = None
    health_check_node_port: StrictInt | None = None
    publish_not_ready_addresses: bool = False
    ip_families: Annotated[list[IPFamily], BeforeValidator(none_as_empty_list)] = Field(default_factory=list)
    ip_family_policy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] | None = None
    allocate_load_balancer_node_ports: bool | None = None
    load_balancer_class: str | None = None
    load_balancer_ip: str | None = Field(default=None, alias="loadBalancerIP")
    load_balancer_source_ranges: _List = Field(default_factory=list)
    traffic_distribution: str | None = None

    @field_validator("selector")
    @classmethod
    def _check_selector(cls, selector: dict[str, str] | None) -> dict[str, str] | None:
        if selector:
            raise_errors(label_errors(selector))
        return selector

    @field_validator("external_ips")
    @classmethod
    def _check_external_ips(cls, ips: list[str]) -> list[str]:
        raise_errors([f"[{i}]: {e}" for i, ip in enumerate(ips) for e in ip_errors(ip)])
        return ips

    @field_validator("load_balancer_source_ranges")
    @classmethod
    def _check_ranges(cls, ranges: list[str]) -> list[str]:
        for i, text in enumerate(ranges):
            try:
                ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise ValueError(f"[{i}]: {shown(text)} must be a valid CIDR (want e.g. 192.0.2.0/24)") from None
        return ranges

    @field_validator("health_check_node_port")
    @classmethod
    def _check_health_port(cls, port: int | None) -> int | None:
        if port:
            raise_errors(_port_errors(port))
        return port or None

    @field_validator("ip_families")
    @classmethod
    def _check_families(cls, families: list[str]) -> list[str]:
        if len(families) > 2:
            raise ValueError("may contain at most 2 entries (one per IP family)")
        if len(set(families)) != len(families):
            raise ValueError("may not contain a family twice")
        return families

    @model_validator(mode="after")
    def _check_spec(self) -> ServiceSpec:
        raise_errors(self._address_errors() + self._port_list_errors() + self._policy_errors())
        return self

    @property
    def addresses(self) -> list[str]:
        """clusterIPs, or the one clusterIP (what the API server fills both from)."""
        return list(self.cluster_ips) or ([self.cluster_ip] if self.cluster_ip else [])

    @property
    def headless(self) -> bool:
        return self.addresses[:1] == ["None"]

    def _address_errors(self) -> list[str]:
        errors: list[str] = []
        if self.cluster_ip and self.cluster_ips and self.cluster_ips[0] != self.cluster_ip:
            errors.append(f"clusterIPs[0]: {shown(self.cluster_ips[0])} must match clusterIP "
                          f"{shown(self.cluster_ip)}")
        addresses = self.addresses
        if self.type == "ExternalName":
            if not self.external_name:
                errors.append("externalName: required for services of type ExternalName")
            else:
                errors += [f"externalName: {shown(self.external_name)} {r}"
                           for r in dns_subdomain_errors(self.external_name.removesuffix("."))][:1]
            if addresses:
                errors.append("clusterIP: must be empty for services of type ExternalName")
            return errors
        if "None" in addresses:
            if addresses != ["None"]:
                errors.append("clusterIPs: 'None' must be the only entry of a headless service")
            if self.type in ("NodePort", "LoadBalancer"):
                errors.append(f"clusterIP: may not be 'None' for {self.type} services")
            return errors
        if len(addresses) > 2:
            errors.append("clusterIPs: may contain at most 2 entries (one per IP family)")
        for i, ip in enumerate(addresses):
            errors += [f"clusterIPs[{i}]: {e}" for e in ip_errors(ip)]
        if len(addresses) == 2 and _family(addresses[0]) == _family(addresses[1]):
            errors.append("clusterIPs: the two addresses must be of different IP families")
        if self.ip_families and addresses and not errors:
            families = [_family(ip) for ip in addresses]
            if families != self.ip_families[:len(families)]:
                errors.append(f"ipFamilies: {self.ip_families} must match the families of clusterIPs {addresses}")
        return errors

    def _port_list_errors(self) -> list[str]:
        errors: list[str] = []
        if not self.ports and not self.headless and self.type != "ExternalName":
            errors.append("ports: required (at least one port, unless the service is headless)")
        names: set[str] = set()
        pairs: set[tuple[int, str]] = set()
        node_pairs: set[tuple[int, str]] = set()
        for i, port in enumerate(self.ports):
            if len(self.ports) > 1 and not port.name:
                errors.append(f"ports[{i}].name: required when a service has several ports")
            if port.name in names:
                errors.append(f"ports[{i}].name: duplicate value {shown(port.name)}")
            names.add(port.name)
            if (port.port, port.protocol) in pairs:
                errors.append(f"ports[{i}]: duplicate port {port.port}/{port.protocol}")
            pairs.add((port.port, port.protocol))
            if port.node_port:
                if self.type not in ("NodePort", "LoadBalancer"):
                    errors.append(f"ports[{i}].nodePort: may not be used when type is {self.type}")
                elif (port.node_port, port.protocol) in node_pairs:
                    errors.append(f"ports[{i}].nodePort: duplicate value {port.node_port}/{port.protocol}")
                node_pairs.add((port.node_port, port.protocol))
        return errors

    def _policy_errors(self) -> list[str]:
        errors: list[str] = []
        external = self.type in ("NodePort", "LoadBalancer") or (self.type == "ClusterIP" and bool(self.external_ips))
        if self.external_traffic_policy is not None and not external:
            errors.append("externalTrafficPolicy: may only be set for externally-accessible services "
                          "(NodePort, LoadBalancer, or with externalIPs)")
        if self.health_check_node_port and not (self.type == "LoadBalancer"
                                                and self.external_traffic_policy == "Local"):
            errors.append("healthCheckNodePort: may only be set when type is LoadBalancer and "
                          "externalTrafficPolicy is Local")
        if self.session_affinity_config is not None and self.session_affinity_config.client_ip is not None \
                and self.session_affinity != "ClientIP":
            errors.append("sessionAffinityConfig: must not be set when sessionAffinity is None")
        if self.type != "LoadBalancer":
            for field, value in (("loadBalancerClass", self.load_balancer_class),
                                 ("allocateLoadBalancerNodePorts", self.allocate_load_balancer_node_ports)):
                if value is not None:
                    errors.append(f"{field}: may only be used when type is LoadBalancer")
        return errors

    @property
    def affinity_timeout(self) -> int:
        """ClientIP affinity: its timeout (the API server's default when unset); 0: none."""
        if self.session_affinity != "ClientIP":
            return 0
        config = self.session_affinity_config.client_ip if self.session_affinity_config else None
        return (config.timeout_seconds if config and config.timeout_seconds else None) or DEFAULT_AFFINITY_TIMEOUT


class LoadBalancerIngress(Model):
    ip: str | None = None
    hostname: str | None = None
    ip_mode: Literal["VIP", "Proxy"] | None = None

    @field_validator("ip")
    @classmethod
    def _check_ip(cls, ip: str | None) -> str | None:
        if ip:
            raise_errors(ip_errors(ip))
        return ip

    @model_validator(mode="after")
    def _check_mode(self) -> LoadBalancerIngress:
        if self.ip_mode is not None and not self.ip:
            raise ValueError("ipMode: may only be set when ip is set")
        return self


class LoadBalancerStatus(Model):
    ingress: Annotated[list[LoadBalancerIngress], BeforeValidator(none_as_empty_list)] = Field(default_factory=list)


class ServiceStatus(Model):
    load_balancer: LoadBalancerStatus = Field(default_factory=LoadBalancerStatus)


class Service(Model):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Service"] = "Service"
    metadata: ObjectMeta
    spec: ServiceSpec  # required: even a headless service states clusterIP None
    status: ServiceStatus = Field(default_factory=ServiceStatus)

    @field_validator("metadata")
    @classmethod
    def _check_name(cls, metadata: ObjectMeta) -> ObjectMeta:
        name = metadata.name
        if not name:
            raise ValueError("name: required")
        if len(name) > 63 or not _DNS1035_LABEL.match(name):
            raise ValueError(f"name: {shown(name)} must be a DNS-1035 label: at most 63 lower case alphanumeric "
                             "characters or '-', starting with a letter and ending with an alphanumeric character")
        return metadata

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.metadata.namespace or DEFAULT_NAMESPACE, self.metadata.name)

    def unallocated(self) -> list[str]:
        """What the API server would allocate and standalone mode needs stated: a cluster IP
        (unless headless or ExternalName) and node ports (NodePort, LoadBalancer)."""
        spec = self.spec
        errors: list[str] = []
        if spec.type != "ExternalName" and not spec.addresses:
            errors.append("spec.clusterIP: required in standalone mode (no API server allocates one): "
                          "choose a free address of your service range, or 'None' for a headless service")
        needs_node_ports = spec.type == "NodePort" or (spec.type == "LoadBalancer"
                                                       and spec.allocate_load_balancer_node_ports is not False)
        for i, port in enumerate(spec.ports):
            if needs_node_ports and not port.node_port:
                errors.append(f"spec.ports[{i}].nodePort: required in standalone mode (no API server allocates "
                              "one): choose a free port of your node port range (e.g. 30000-32767)")
        return errors


# --- EndpointSlice -------------------------------------------------------------------------


class EndpointConditions(Model):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class ForZone(Model):
    name: str


class EndpointHints(Model):
    for_zones: Annotated[list[ForZone], BeforeValidator(none_as_empty_list)] = Field(default_factory=list)
    for_nodes: Annotated[list[ForZone], BeforeValidator(none_as_empty_list)] = Field(default_factory=list)

    @field_validator("for_zones")
    @classmethod
    def _check_zones(cls, zones: list[ForZone]) -> list[ForZone]:
        if len(zones) > MAX_ZONE_HINTS:
            raise ValueError(f"must have at most {MAX_ZONE_HINTS} items")
        return zones


class ObjectReference(Model):
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None


class Endpoint(Model):
    addresses: list[str]
    conditions: EndpointConditions = Field(default_factory=EndpointConditions)
    hostname: str | None = None
    target_ref: ObjectReference | None = None
    node_name: str | None = None
    zone: str | None = None
    hints: EndpointHints | None = None
    deprecated_topology: Annotated[dict[str, str], BeforeValidator(none_as_empty)] = Field(default_factory=dict)

    @field_validator("addresses")
    @classmethod
    def _check_count(cls, addresses: list[str]) -> list[str]:
        if not 1 <= len(addresses) <= MAX_ENDPOINT_ADDRESSES:
            raise ValueError(f"must have between 1 and {MAX_ENDPOINT_ADDRESSES} addresses")
        return addresses

    @field_validator("hostname")
    @classmethod
    def _check_hostname(cls, hostname: str | None) -> str | None:
        if hostname:
            raise_errors([f"{shown(hostname)} {r}" for r in dns_label_errors(hostname)][:1])
        return hostname

    @field_validator("node_name")
    @classmethod
    def _check_node(cls, node: str | None) -> str | None:
        if node:
            raise_errors([f"{shown(node)} {r}" for r in dns_subdomain_errors(node)][:1])
        return node


class EndpointPort(Model):
    name: str | None = None
    protocol: Protocol = "TCP"
    port: StrictInt | None = None
    app_protocol: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        if name:
            raise_errors([f"{shown(name)} {r}" for r in dns_label_errors(name)][:1])
        return name

    @field_validator("port")
    @classmethod
    def _check_port(cls, port: int | None) -> int | None:
        if port is not None and not 0 <= port <= 65535:
            raise ValueError(f"{port} must be between 0 and 65535, inclusive")
        return port


class EndpointSlice(Model):
    api_version: Literal["discovery.k8s.io/v1"] = "discovery.k8s.io/v1"
    kind: Literal["EndpointSlice"] = "EndpointSlice"
    metadata: ObjectMeta
    address_type: AddressType
    endpoints: Annotated[list[Endpoint], BeforeValidator(none_as_empty_list)] = Field(default_factory=list)
    ports: Annotated[list[EndpointPort], BeforeValidator(none_as_empty_list)] = Field(default_factory=list)

    @field_validator("metadata")
    @classmethod
    def _check_name(cls, metadata: ObjectMeta) -> ObjectMeta:
        return named_as_dns_subdomain(metadata)

    @field_validator("endpoints")
    @classmethod
    def _check_endpoints(cls, endpoints: list[Endpoint]) -> list[Endpoint]:
        if len(endpoints) > MAX_SLICE_ENDPOINTS:
            raise ValueError(f"must have at most {MAX_SLICE_ENDPOINTS} items")
        return endpoints

    @field_validator("ports")
    @classmethod
    def _check_ports(cls, ports: list[EndpointPort]) -> list[EndpointPort]:
        if len(ports) > MAX_SLICE_PORTS:
            raise ValueError(f"must have at most {MAX_SLICE_PORTS} items")
        seen: set[str] = set()
        for i, port in enumerate(ports):
            if (port.name or "") in seen:
                raise ValueError(f"[{i}].name: duplicate value {shown(port.name or '')}")
            seen.add(port.name or "")
        return ports

    @model_validator(mode="after")
    def _check_addresses(self) -> EndpointSlice:
        errors: list[str] = []
        for i, endpoint in enumerate(self.endpoints):
            for j, address in enumerate(endpoint.addresses):
                where = f"endpoints[{i}].addresses[{j}]"
                if self.address_type == "FQDN":
                    errors += [f"{where}: {shown(address)} {r}" for r in dns_subdomain_errors(address)][:1]
                    continue
                version: int
                try:
                    version = ipaddress.ip_address(address).version
                except ValueError:
                    version = 0
                if version != (4 if self.address_type == "IPv4" else 6):
                    errors.append(f"{where}: {shown(address)} must be a valid {self.address_type} address")
        raise_errors(errors[:10])
        return self

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.metadata.namespace or DEFAULT_NAMESPACE, self.metadata.name)

    @property
    def service_name(self) -> str:
        return self.metadata.labels.get(SERVICE_NAME_LABEL, "")
