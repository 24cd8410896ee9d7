"""EndpointSlices of a Service from its Pods, as Kubernetes' EndpointSlice controller makes them (pure).

Standalone mode has no controller manager, so its local source runs this for every Service
with a selector; in a cluster the real controller writes the slices and the operator watches
them. Same rules as the controller:

- the Service's selector (non-empty; ExternalName services get none) picks the Pods of its
  namespace that are not terminal (phase Succeeded or Failed) and have an address;
- an endpoint per Pod and address family the Service serves (`ipFamilies`, else the families
  of its cluster IPs, else, headless, both): the Pod's addresses of that family;
- conditions: `serving` is the Pod's `Ready` condition, `terminating` is a set
  `deletionTimestamp`, `ready` is serving and not terminating, or always with
  `publishNotReadyAddresses`;
- `nodeName`, the node's `topology.kubernetes.io/zone` label as `zone` when the node is
  known, `hostname` when the Pod's `subdomain` names the Service, `targetRef` the Pod;
- ports: each service port with its `targetPort` resolved on that Pod (a name through the
  container ports, sidecars included, of the port's protocol); a port the Pod cannot resolve
  is left out for that Pod. Pods are grouped into slices by address family and resolved
  ports, at most 100 endpoints a slice, so a named port can map to different numbers.

Slice names are derived from the service name and the group (stable across restarts, so
re-deriving changes nothing the stream carries); the controller's placeholder slice for a
service without endpoints is not made (it carries nothing).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

JSON = dict[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.membrane.io"
ZONE_LABEL = "topology.kubernetes.io/zone"
MAX_ENDPOINTS_PER_SLICE = 100  # the controller's default --max-endpoints-per-slice


def _meta(obj: JSON) -> JSON:
    return obj.get("metadata") or {}


def selector_of(service: JSON) -> dict[str, str]:
    """The selector that makes slices: empty for ExternalName services and for services
    without one (whose endpoints someone else manages)."""
    spec = service.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return {}
    return dict(spec.get("selector") or {})


def selects(selector: Mapping[str, str], pod: JSON) -> bool:
    labels = _meta(pod).get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _family(ip: str) -> str:
    if ":" not in ip and ip.count(".") == 3:
        return "IPv4"  # the common case without a full parse (pods' and services' addresses were validated)
    try:
        return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
    except ValueError:
        return ""


def address_families(service: JSON) -> list[str]:
    spec = service.get("spec") or {}
    families = [f for f in spec.get("ipFamilies") or [] if f in ("IPv4", "IPv6")]
    if families:
        return families
    ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None"]
    return list(dict.fromkeys(_family(ip) for ip in ips if _family(ip))) or ["IPv4", "IPv6"]


def pod_ips(pod: JSON) -> list[str]:
    status = pod.get("status") or {}
    ips = [status["podIP"]] if status.get("podIP") else []
    ips += [entry.get("ip") for entry in status.get("podIPs") or [] if entry.get("ip")]
    return list(dict.fromkeys(ips))


def is_ready(pod: JSON) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _in_endpoints(pod: JSON) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return phase not in ("Succeeded", "Failed") and bool(pod_ips(pod))


def find_port(pod: JSON, service_port: JSON) -> int | None:
    """The container port a service port's targetPort means on this Pod (None: it has none)."""
    target = service_port.get("targetPort")
    if target in (None, "", 0):
        target = service_port.get("port")
    if isinstance(target, int) and not isinstance(target, bool):
        return target if 0 < target <= 65535 else None
    protocol = service_port.get("protocol") or "TCP"
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or []) + [
        c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]  # sidecars
    for container in containers:
        for port in container.get("ports") or []:
            if port.get("name") == target and (port.get("protocol") or "TCP") == protocol:
                number = port.get("containerPort")
                return number if isinstance(number, int) else None
    return None


def endpoint_ports(service: JSON, pod: JSON) -> tuple[JSON, ...]:
    ports = []
    for sp in (service.get("spec") or {}).get("ports") or []:
        number = find_port(pod, sp)
        if number is None:
            continue  # as the controller: this port is left out for this pod
        port: JSON = {"name": sp.get("name") or "", "port": number, "protocol": sp.get("protocol") or "TCP"}
        if sp.get("appProtocol"):
            port["appProtocol"] = sp["appProtocol"]
        ports.append(port)
    return tuple(ports)


def pod_endpoint(service: JSON, pod: JSON, addresses: list[str], node_zones: Mapping[str, str]) -> JSON:
    meta, spec = _meta(pod), pod.get("spec") or {}
    serving = is_ready(pod)
    terminating = meta.get("deletionTimestamp") is not None
    ready = bool((service.get("spec") or {}).get("publishNotReadyAddresses")) or (serving and not terminating)
    endpoint: JSON = {"addresses": addresses,
                      "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                      "targetRef": {"kind": "Pod", "namespace": meta.get("namespace", ""), "name": meta.get("name", "")}}
    if meta.get("uid"):
        endpoint["targetRef"]["uid"] = meta["uid"]
    node = spec.get("nodeName")
    if node:
        endpoint["nodeName"] = node
        if node_zones.get(node):
            endpoint["zone"] = node_zones[node]
    if spec.get("hostname") and spec.get("subdomain") == _meta(service).get("name"):
        endpoint["hostname"] = spec["hostname"]
    return endpoint


def _slice_name(service_name: str, family: str, ports: tuple[JSON, ...], index: int) -> str:
    digest = hashlib.sha256(json.dumps([family, ports, index], sort_keys=True).encode()).hexdigest()[:10]
    return f"{service_name}-{digest}"


def derive_endpoint_slices(service: JSON, pods: Iterable[JSON], node_zones: Mapping[str, str]) -> list[JSON]:
    """The EndpointSlices the controller would keep for `service` (none without a selector).

    `pods` may hold any pods; those of other namespaces or not selected are skipped.
    `node_zones`: node name -> its zone label, for the nodes known."""
    selector = selector_of(service)
    if not selector:
        return []
    meta = _meta(service)
    namespace, name = meta.get("namespace") or "default", meta.get("name", "")
    groups: dict[tuple[str, str], list[JSON]] = defaultdict(list)  # (family, ports JSON) -> endpoints
    ports_of: dict[tuple[str, str], tuple[JSON, ...]] = {}
    families = address_families(service)
    chosen = sorted((p for p in pods if (_meta(p).get("namespace") or "default") == namespace
                     and selects(selector, p) and _in_endpoints(p)), key=lambda p: _meta(p).get("name", ""))
    for pod in chosen:
        ports = endpoint_ports(service, pod)
        ports_key = json.dumps(ports, sort_keys=True)
        for family in families:
            addresses = [ip for ip in pod_ips(pod) if _family(ip) == family]
            if addresses:
                groups[(family, ports_key)].append(pod_endpoint(service, pod, addresses, node_zones))
                ports_of[(family, ports_key)] = ports
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if k not in (SERVICE_NAME_LABEL, MANAGED_BY_LABEL)}
    labels.update({SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY})
    slices = []
    for (family, ports_key), endpoints in sorted(groups.items()):
        ports = ports_of[(family, ports_key)]
        for index in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE):
            slice_meta: JSON = {"name": _slice_name(name, family, ports, index // MAX_ENDPOINTS_PER_SLICE),
                                "namespace": namespace, "labels": dict(labels)}
            if meta.get("uid"):
                slice_meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Service", "name": name,
                                                  "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]
            slices.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": slice_meta,
                           "addressType": family, "ports": [dict(p) for p in ports],
                           "endpoints": endpoints[index:index + MAX_ENDPOINTS_PER_SLICE]})
    return slices


def _zone(node: JSON | None) -> str:
    return str((_meta(node).get("labels") or {}).get(ZONE_LABEL) or "") if node else ""


class EndpointSliceDeriver:
    """Keeps the derived slices of every Service up to date, object by object (pure).

    Setters record; `take_changes()` re-derives the services touched since its last call (once
    each, however many of their pods changed: a batch of 300 pods costs one derivation per
    service) and returns the derived slices that changed: slice key (`namespace/name`) -> the
    slice, or None when it is gone. Each service keeps the set of pods its selector matches, so
    a pod change costs the services of its namespace (a selector check each) plus re-deriving
    the ones it enters, leaves or stays in, from their own pods only; a service change
    re-selects among its namespace's pods; a node's zone change re-derives the services with an
    endpoint on that node.
    """

    def __init__(self) -> None:
        self._services: dict[str, JSON] = {}  # "namespace/name" -> Service
        self._selectors: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)  # ns -> service key -> selector
        # ns -> one (label, value) pair of each selector -> service keys: the services a pod may
        # match are found through its labels, not by trying every selector of the namespace.
        self._by_pair: dict[str, dict[tuple[str, str], set[str]]] = defaultdict(lambda: defaultdict(set))
        self._members: dict[str, dict[str, JSON]] = {}  # service key -> pod key -> the selected Pod
        self._pods: dict[str, dict[str, JSON]] = defaultdict(dict)  # namespace -> pod key -> Pod
        self._pods_by_pair: dict[str, dict[tuple[str, str], set[str]]] = defaultdict(lambda: defaultdict(set))
        self._zones: dict[str, str] = {}  # node name -> zone label
        self._derived: dict[str, dict[str, JSON]] = {}  # service key -> slice key -> slice
        self._nodes: dict[str, set[str]] = {}  # service key -> nodes of its endpoints
        self._dirty: set[str] = set()  # service keys to re-derive

    def slices(self) -> dict[str, JSON]:
        return {key: s for derived in self._derived.values() for key, s in derived.items()}

    def take_changes(self) -> dict[str, JSON | None]:
        dirty, self._dirty = self._dirty, set()
        return self._rederive(sorted(dirty))

    def set_service(self, key: str, obj: JSON | None) -> None:
        namespace = key.partition("/")[0]
        selectors = self._selectors[namespace]
        self._members.pop(key, None)
        old_selector = selectors.pop(key, None)
        if old_selector:
            pair = min(old_selector.items())
            self._by_pair[namespace][pair].discard(key)
            if not self._by_pair[namespace][pair]:
                del self._by_pair[namespace][pair]
        if obj is None:
            self._services.pop(key, None)
        else:
            self._services[key] = obj
            selector = selectors[key] = selector_of(obj)
            if selector:
                pair = min(selector.items())
                self._by_pair[namespace][pair].add(key)
                pods = self._pods.get(namespace, {})
                self._members[key] = {k: pods[k] for k in sorted(self._pods_by_pair[namespace].get(pair, ()))
                                      if selects(selector, pods[k])}
        if not selectors:
            del self._selectors[namespace]
        self._dirty.add(key)

    def set_pod(self, key: str, obj: JSON | None) -> None:
        namespace = key.partition("/")[0]
        pods = self._pods[namespace]
        old = pods.pop(key, None)
        pod_pairs = self._pods_by_pair[namespace]
        for pair in (_meta(old).get("labels") or {}).items() if old is not None else ():
            pod_pairs[pair].discard(key)
            if not pod_pairs[pair]:
                del pod_pairs[pair]
        if obj is not None:
            pods[key] = obj
            for pair in (_meta(obj).get("labels") or {}).items():
                pod_pairs[pair].add(key)
        if not pods:
            del self._pods[namespace]
            del self._pods_by_pair[namespace]
        by_pair = self._by_pair.get(namespace, {})
        candidates: set[str] = set()
        for pod in (old, obj):
            for pair in ((_meta(pod).get("labels") or {}).items() if pod is not None else ()):
                candidates |= by_pair.get(pair, set())
        for skey in candidates:
            selector = self._selectors[namespace][skey]
            members = self._members[skey]
            if obj is not None and selects(selector, obj):
                members[key] = obj
                self._dirty.add(skey)
            elif members.pop(key, None) is not None:
                self._dirty.add(skey)

    def set_node(self, name: str, obj: JSON | None) -> None:
        zone = _zone(obj)
        if self._zones.get(name, "") == zone:
            return
        if zone:
            self._zones[name] = zone
        else:
            self._zones.pop(name, None)
        self._dirty.update(key for key, nodes in self._nodes.items() if name in nodes)

    def _rederive(self, service_keys: Iterable[str]) -> dict[str, JSON | None]:
        changes: dict[str, JSON | None] = {}
        for skey in service_keys:
            svc = self._services.get(skey)
            namespace = skey.partition("/")[0]
            members = self._members.get(skey, {})
            fresh = derive_endpoint_slices(svc, members.values(), self._zones) if svc else []
            new = {f"{namespace}/{s['metadata']['name']}": s for s in fresh}
            old = self._derived.pop(skey, {})
            if new:
                self._derived[skey] = new
                self._nodes[skey] = {ep["nodeName"] for s in fresh for ep in s["endpoints"] if ep.get("nodeName")}
            else:
                self._nodes.pop(skey, None)
            changes.update({k: None for k in old if k not in new})
            changes.update({k: s for k, s in new.items() if old.get(k) != s})
        return changes
