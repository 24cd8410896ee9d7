"""Service and EndpointSlice objects -> the stream's records (pure).

Reads the Kubernetes JSON as the API server stores it (defaults applied) and as the local
store holds it (defaults may be missing: the same defaults are applied here), so both sources
give equal records for equal objects. Tolerant of what it does not need: a record is what the
load balancer uses, nothing else.
"""

from __future__ import annotations

from typing import Any

from membrane.api.state_objects import (
    EndpointPortState,
    EndpointSliceState,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
)

JSON = dict[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
DEFAULT_AFFINITY_TIMEOUT = 10800  # the API server's default for ClientIP affinity


def _meta(obj: JSON) -> JSON:
    return obj.get("metadata") or {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value if v) if isinstance(value, list) else ()


def service_state(obj: JSON) -> ServiceState:
    meta, spec = _meta(obj), obj.get("spec") or {}
    kind = spec.get("type") or "ClusterIP"
    ips = _strings(spec.get("clusterIPs")) or _strings([spec.get("clusterIP")])
    if kind == "ExternalName" or "None" in ips:
        ips = ()  # headless and ExternalName: no frontends
    ports = []
    for port in spec.get("ports") or []:
        number = _int(port.get("port"))
        target = port.get("targetPort")
        ports.append(ServicePortState(
            str(port.get("name") or ""), str(port.get("protocol") or "TCP"), number,
            str(target) if target not in (None, 0, "") else str(number), _int(port.get("nodePort"))))
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    affinity = 0
    if spec.get("sessionAffinity") == "ClientIP":
        config = (spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
        affinity = _int(config.get("timeoutSeconds")) or DEFAULT_AFFINITY_TIMEOUT
    return ServiceState(
        str(meta.get("namespace") or ""), str(meta.get("name") or ""), str(kind), ips, tuple(ports),
        _strings(spec.get("externalIPs")), tuple(str(i["ip"]) for i in ingress if isinstance(i, dict) and i.get("ip")),
        affinity, spec.get("externalTrafficPolicy") == "Local", spec.get("internalTrafficPolicy") == "Local",
        _int(spec.get("healthCheckNodePort")))


def _condition(conditions: JSON, name: str, unset: bool) -> bool:
    value = conditions.get(name)
    return unset if value is None else bool(value)


def endpoint_slice_state(obj: JSON) -> EndpointSliceState:
    meta = _meta(obj)
    ports = tuple(EndpointPortState(str(p.get("name") or ""), str(p.get("protocol") or "TCP"), _int(p.get("port")))
                  for p in obj.get("ports") or [] if isinstance(p, dict))
    endpoints = []
    for ep in obj.get("endpoints") or []:
        conditions = ep.get("conditions") or {}
        ref = ep.get("targetRef") or {}
        target = f"{ref.get('namespace') or ''}/{ref['name']}" if ref.get("kind", "Pod") == "Pod" and ref.get("name") \
            else ""
        endpoints.append(SliceEndpointState(
            _strings(ep.get("addresses")),
            # As the API documents unset conditions: ready and serving true, terminating false.
            _condition(conditions, "ready", True), _condition(conditions, "serving", True),
            _condition(conditions, "terminating", False),
            str(ep.get("nodeName") or ""), str(ep.get("zone") or ""),
            tuple(str(z.get("name")) for z in (ep.get("hints") or {}).get("forZones") or [] if z.get("name")),
            target))
    return EndpointSliceState(
        str(meta.get("namespace") or ""), str(meta.get("name") or ""),
        str((meta.get("labels") or {}).get(SERVICE_NAME_LABEL) or ""), str(obj.get("addressType") or "IPv4"),
        ports, tuple(endpoints))
