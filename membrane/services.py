"""The service table (pure): every address a service answers on, with the backends it uses.

Input: the stream's Service and EndpointSlice records (membrane/api/state_objects.py) and this
node's name and addresses. Output: `Frontend` -> `ServiceFrontend`, which the load-balancer
manager writes into the datapath's maps as is (the socket hooks and tc look a frontend up by
address, port and protocol). Every rule a Kubernetes user expects of kube-proxy is decided here:

- Frontends: one per cluster IP, external IP and `status.loadBalancer.ingress` IP, and per
  port and protocol of the service (the same port over TCP and UDP gives two frontends).
  NodePort (and the node ports of a LoadBalancer service): one frontend per address of this
  node given in `node_addresses`, of the service's IP families; no wildcard entry, so the
  socket hooks and tc do one exact lookup. Headless services (no cluster IP) and ExternalName
  services have no frontends.
- Backends of a service port: the endpoints of the service's EndpointSlices (label
  `kubernetes.io/service-name`) of the frontend's address family, on the slice port with the
  service port's name and protocol. A named `targetPort` is resolved per endpoint by the
  slice: endpoints whose pods resolve it to different numbers are in different slices (as the
  EndpointSlice controller groups them). One backend per address and port; a duplicate (an
  endpoint moving between slices) keeps its most usable state.
- Traffic policy: `internalTrafficPolicy: Local` keeps only this node's endpoints for the
  cluster IP frontends; `externalTrafficPolicy: Local` does so for NodePort, external IP and
  LoadBalancer frontends (their cluster IP still uses every endpoint).
- Choice: the ready endpoints; when none is ready, the serving and terminating ones (a rolling
  update's last pods keep answering); else none, and the frontend refuses connections.
- `sessionAffinity: ClientIP`: `affinity_timeout` seconds (0: no affinity).
- One frontend per (address, port, protocol): a user-chosen external or LoadBalancer IP that
  collides with another service's frontend goes to the cluster IP if one is involved, else to
  the service first in (namespace, name) order, so every node decides alike.

Topology hints (`hints.forZones`) are carried in the records but not used for the choice yet.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from membrane.api.state_objects import EndpointSliceState, ServicePortState, ServiceState

FrontendKind = Literal["ClusterIP", "NodePort", "ExternalIP", "LoadBalancer"]
# Which frontend keeps an (address, port, protocol) that two services claim: lower wins.
_KIND_RANK = {"ClusterIP": 0, "LoadBalancer": 1, "ExternalIP": 2, "NodePort": 3}
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds: the API server's default for ClientIP affinity


@dataclass(frozen=True, order=True)
class Frontend:
    ip: str
    port: int
    protocol: str  # TCP | UDP | SCTP
    kind: str  # FrontendKind

    @property
    def address(self) -> tuple[str, int, str]:
        """What the datapath looks up: (ip, port, protocol)."""
        return (self.ip, self.port, self.protocol)

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}/{self.protocol}"


@dataclass(frozen=True, order=True)
class Backend:
    ip: str
    port: int
    node: str = ""
    zone: str = ""
    ready: bool = True
    serving: bool = True
    terminating: bool = False

    @property
    def key(self) -> str:
        """Stable name of the backend: what Maglev hashes (never Python's hash())."""
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"

    @property
    def state(self) -> str:
        if self.ready:
            return "ready"
        if self.serving and self.terminating:
            return "terminating"
        return "terminating-not-serving" if self.terminating else "not-ready"


@dataclass(frozen=True)
class ServiceFrontend:
    """A frontend with what its traffic needs: the backends to use (already chosen; empty:
    refuse), the affinity, and which traffic policies applied."""

    frontend: Frontend
    namespace: str
    name: str
    port_name: str
    backends: tuple[Backend, ...] = ()
    affinity_timeout: int = 0
    external_local: bool = False
    internal_local: bool = False
    health_check_node_port: int = 0

    @property
    def service(self) -> str:
        return f"{self.namespace}/{self.name}"


def _family(ip: str) -> int:
    """4 or 6. The records' addresses were validated at the source (the API server, the local
    store); parsing each with ipaddress again would dominate a 10,000-service table."""
    return 6 if ":" in ip else 4


@lru_cache(maxsize=1 << 16)
def _ip_sort(ip: str) -> tuple[int, int]:
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return (9, 0)
    return (parsed.version, int(parsed))


_FAMILY_OF_TYPE = {"IPv4": 4, "IPv6": 6}


def _usable_rank(b: Backend) -> tuple[bool, bool, bool]:
    return (b.ready, b.serving, not b.terminating)


def candidates(port: ServicePortState, slices: Iterable[EndpointSliceState],
               family: int) -> list[Backend]:
    """Every endpoint of the service port of one address family, one per address and port."""
    found: dict[tuple[str, int], Backend] = {}
    for eps in slices:
        if _FAMILY_OF_TYPE.get(eps.address_type) != family:
            continue  # FQDN slices and the other family's
        target = next((p.port for p in eps.ports if p.name == port.name and p.protocol == port.protocol), 0)
        if not 0 < target <= 65535:
            continue
        for ep in eps.endpoints:
            if not ep.addresses or _family(ep.addresses[0]) != family:
                continue
            # The addresses of an endpoint are fungible: the first one is used (as kube-proxy).
            backend = Backend(ep.addresses[0], target, ep.node_name, ep.zone, ep.ready, ep.serving, ep.terminating)
            old = found.get((backend.ip, backend.port))
            if old is None or _usable_rank(backend) > _usable_rank(old):
                found[(backend.ip, backend.port)] = backend
    return sorted(found.values(), key=lambda b: (_ip_sort(b.ip), b.port))


def choose(backends: Iterable[Backend], local_only: bool, node_name: str) -> tuple[Backend, ...]:
    """Traffic policy first (this node's endpoints only), then readiness: the ready ones, else
    the serving terminating ones, else none."""
    pool = [b for b in backends if not local_only or b.node == node_name]
    ready = tuple(b for b in pool if b.ready)
    if ready:
        return ready
    return tuple(b for b in pool if b.serving and b.terminating)


def slices_by_service(endpoint_slices: Iterable[EndpointSliceState]) -> dict[tuple[str, str], list[EndpointSliceState]]:
    index: dict[tuple[str, str], list[EndpointSliceState]] = defaultdict(list)
    for eps in endpoint_slices:
        if eps.service:
            index[(eps.namespace, eps.service)].append(eps)
    for group in index.values():
        group.sort(key=lambda s: s.name)  # duplicates resolve the same whatever the input order
    return index


def service_frontends(service: ServiceState, slices: list[EndpointSliceState], node_name: str,
                      node_addresses: Iterable[str] = ()) -> list[ServiceFrontend]:
    """The frontends of one service (none for headless and ExternalName services)."""
    if service.type == "ExternalName" or not service.cluster_ips:
        return []
    families = {_family(ip) for ip in service.cluster_ips} - {0}
    addresses: list[tuple[str, str]] = [(ip, "ClusterIP") for ip in service.cluster_ips]
    addresses += [(ip, "ExternalIP") for ip in service.external_ips]
    addresses += [(ip, "LoadBalancer") for ip in service.load_balancer_ips] if service.type == "LoadBalancer" else []
    node_ips = [ip for ip in dict.fromkeys(node_addresses) if _family(ip) in families]
    out: list[ServiceFrontend] = []
    for port in service.ports:
        by_family = {family: candidates(port, slices, family) for family in families}
        targets = [(ip, port.port, kind) for ip, kind in addresses]
        if service.type in ("NodePort", "LoadBalancer") and port.node_port:
            targets += [(ip, port.node_port, "NodePort") for ip in node_ips]
        for ip, number, kind in targets:
            family = _family(ip)
            if family not in families:
                continue  # an external IP of a family the service does not serve
            external = kind != "ClusterIP"
            local = service.external_traffic_local if external else service.internal_traffic_local
            out.append(ServiceFrontend(
                Frontend(ip, number, port.protocol, kind), service.namespace, service.name, port.name,
                choose(by_family[family], local, node_name), service.affinity_timeout,
                external_local=service.external_traffic_local, internal_local=service.internal_traffic_local,
                health_check_node_port=service.health_check_node_port))
    return out


def service_table(services: Iterable[ServiceState], endpoint_slices: Iterable[EndpointSliceState],
                  node_name: str, node_addresses: Iterable[str] = ()) -> dict[Frontend, ServiceFrontend]:
    """Every frontend of every service on this node, one per (address, port, protocol)."""
    index = slices_by_service(endpoint_slices)
    addresses = tuple(node_addresses)
    chosen: dict[tuple[str, int, str], ServiceFrontend] = {}
    for service in sorted(services, key=lambda s: (s.namespace, s.name)):
        for entry in service_frontends(service, index.get((service.namespace, service.name), []),
                                       node_name, addresses):
            where = entry.frontend.address
            held = chosen.get(where)
            if held is None or _KIND_RANK[entry.frontend.kind] < _KIND_RANK[held.frontend.kind]:
                chosen[where] = entry
    return {entry.frontend: entry for entry in sorted(chosen.values(), key=lambda e: e.frontend)}


@dataclass(frozen=True)
class HealthCheck:
    """What `healthCheckNodePort` answers on this node: 200 when local endpoints exist."""

    namespace: str
    name: str
    port: int
    local_endpoints: int


def health_checks(services: Iterable[ServiceState], endpoint_slices: Iterable[EndpointSliceState],
                  node_name: str) -> dict[int, HealthCheck]:
    """healthCheckNodePort -> its service and how many usable endpoints it has on this node
    (LoadBalancer services with externalTrafficPolicy Local)."""
    index = slices_by_service(endpoint_slices)
    out: dict[int, HealthCheck] = {}
    for service in sorted(services, key=lambda s: (s.namespace, s.name)):
        if not service.health_check_node_port or service.health_check_node_port in out:
            continue
        slices = index.get((service.namespace, service.name), [])
        local: set[str] = set()
        for port in service.ports:
            for family in {_family(ip) for ip in service.cluster_ips} - {0}:
                local.update(b.ip for b in choose(candidates(port, slices, family), True, node_name))
        out[service.health_check_node_port] = HealthCheck(service.namespace, service.name,
                                                          service.health_check_node_port, len(local))
    return out
