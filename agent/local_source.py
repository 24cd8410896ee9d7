"""Standalone mode's source: the local object store fed to the operator's own state logic.

In a cluster the operator watches the Kubernetes API and turns what it sees into a versioned
snapshot + deltas (operator/watching.py -> state_building.py -> state_log.py). Without a
cluster the local store (`membranectl apply`) is that source, and this adapter runs the same
`StateBuilder` and `StateLog` in process, so both modes produce the same stream records from
the same objects.

What the API server and the operator's leader add in a cluster, this source adds locally:

- a stored Pod without `spec.nodeName` is this node's pod (standalone has one node), and a
  pod without addresses in its status gets the ones its local endpoint holds (CNI ADD), which
  is what the kubelet reports in a cluster;
- a local endpoint whose pod is not stored (wired by CNI without `membranectl apply`, or whose
  object was deleted while it runs) is a pod of its namespace without labels: it gets the
  identity of that namespace's unlabelled pods, as a pod of no stored object always had;
- a pod whose namespace is not stored takes empty namespace labels (`implicit_namespaces`):
  no API server makes the namespace exist first;
- a pod of another node that is not stored says where that node is (`status.hostIP`): the
  node's record is made from it, so the node's pods are reached through the overlay (a
  stored Node object wins);
- identities: the allocator given (the node's own, persisted by the agent) numbers every label
  set a pod needs, and the number is fed to the builder as the same MembraneIdentity object
  the operator's leader writes (operator/identity_objects.py), so the builder reads identities
  one way. One allocator: local here, the operator's in a cluster;
- EndpointSlices: for every stored Service with a selector, the slices Kubernetes'
  EndpointSlice controller would make from the stored Pods (operator/endpointslice_deriving.py),
  fed to the builder like slices watched in a cluster (applied EndpointSlices go in as they are,
  for services without a selector). A pod without a Ready condition counts as ready here: no
  kubelet reports readiness in standalone mode.

Pure: no I/O of its own; `commit` returns the delta the stream gained (None: nothing changed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel

from membrane.api.state_objects import StateKey, StateObject
from membrane.identities import IdentityAllocator, LabelSet
from membrane.operator.endpointslice_deriving import EndpointSliceDeriver
from membrane.operator.identity_objects import identity_object
from membrane.operator.state_building import StateBuilder
from membrane.operator.state_log import Delta, StateLog

JSON = dict[str, Any]
ObjectKey = tuple[str, str, str]  # kind, namespace, name (the store's key)
LOCAL_STREAM = "local"
_SETTERS = {"Namespace": "set_namespace", "Node": "set_node", "Pod": "set_pod", "NetworkPolicy": "set_policy",
            "PacketFilter": "set_packet_filter", "CIDRDenyList": "set_cidr_deny_list",
            "Service": "set_service", "EndpointSlice": "set_endpoint_slice"}
STREAMED_KINDS = tuple(_SETTERS)  # the store kinds the stream carries


def object_json(kind: str, key: ObjectKey, obj: BaseModel | JSON) -> JSON:
    """A stored object as it was applied (fields the model defaults left out, as the API
    server would store them; the store defaults the namespace)."""
    data = obj.model_dump(mode="json", by_alias=True, exclude_unset=True) if isinstance(obj, BaseModel) else dict(obj)
    data.setdefault("kind", kind)
    if key[1]:
        data["metadata"] = {**(data.get("metadata") or {}), "namespace": key[1]}
    return data


def builder_key(key: ObjectKey) -> str:
    return f"{key[1]}/{key[2]}" if key[1] else key[2]


class LocalSource:
    """Store objects -> StateBuilder -> StateLog, with identities from a local allocator.

    `on_object` is the store's listener (records only); `commit` allocates the identities the
    recorded pods need, releases the ones no pod holds, and appends one delta to the log.
    """

    def __init__(self, node_name: str, allocator: IdentityAllocator | None = None,
                 log: StateLog | None = None, clock: Callable[[], float] = time.time) -> None:
        self.node_name = node_name
        self.allocator = allocator if allocator is not None else IdentityAllocator()
        self.log = log if log is not None else StateLog(stream_id=LOCAL_STREAM)
        self.builder = StateBuilder(implicit_namespaces=True)
        self.clock = clock
        self._pods: dict[str, JSON] = {}  # builder key -> the stored pod (before local facts)
        self._addresses: dict[str, tuple[str, ...]] = {}  # builder key -> local endpoint IPs
        self._held: dict[str, LabelSet] = {}  # pod key -> labels it holds an identity for
        self._fed: dict[int, LabelSet] = {}  # identity objects fed to the builder
        self.slices = EndpointSliceDeriver()  # the EndpointSlice controller's work, locally
        self._stored_nodes: set[str] = set()
        self._host_ips: dict[str, dict[str, str]] = {}  # node not stored -> its pods' hostIP
        self._implicit_nodes: dict[str, str] = {}  # node records made from pods' hostIP -> the address given

    # --- feeding -------------------------------------------------------------------------------
    def on_object(self, kind: str, key: ObjectKey, obj: BaseModel | JSON | None) -> None:
        setter = _SETTERS.get(kind)
        if setter is None:
            return  # a kind the stream does not carry
        name = builder_key(key)
        data = object_json(kind, key, obj) if obj is not None else None
        if kind == "Pod":
            self._pod_host(name, data)
            if data is None:
                self._pods.pop(name, None)
            else:
                self._pods[name] = data
            data = self._with_local_facts(name)
        elif kind == "Node":
            if data is None:
                self._stored_nodes.discard(name)
            else:
                self._stored_nodes.add(name)
                self._implicit_nodes.pop(name, None)
        getattr(self.builder, setter)(name, data)
        if kind == "Node" and data is None:
            self._implicit_node(name)
        if kind == "Pod":
            self.slices.set_pod(name, self._for_slices(name))
        elif kind == "Service":
            self.slices.set_service(name, data)
        elif kind == "Node":
            self.slices.set_node(name, data)

    def load(self, objects: Iterable[tuple[str, ObjectKey, BaseModel | JSON]]) -> None:
        for kind, key, obj in objects:
            self.on_object(kind, key, obj)

    def on_endpoint(self, namespace: str, pod: str, ips: tuple[str, ...] | None) -> None:
        """The local endpoint of a pod got (or lost: None) its addresses."""
        name = f"{namespace}/{pod}"
        if ips:
            self._addresses[name] = tuple(ips)
        else:
            self._addresses.pop(name, None)
        self.builder.set_pod(name, self._with_local_facts(name))
        self.slices.set_pod(name, self._for_slices(name))

    def _pod_host(self, name: str, pod: JSON | None) -> None:
        """Where another node's pod says its node is (a node with no stored object)."""
        old = self._pods.get(name)
        nodes = set()
        for obj, keep in ((old, False), (pod, True)):
            node = str(((obj or {}).get("spec") or {}).get("nodeName") or "")
            host = str(((obj or {}).get("status") or {}).get("hostIP") or "")
            if not node or node == self.node_name:
                continue
            nodes.add(node)
            if not keep:
                self._host_ips.get(node, {}).pop(name, None)
            elif host:
                self._host_ips.setdefault(node, {})[name] = host
        for node in nodes:
            self._implicit_node(node)

    def _implicit_node(self, node: str) -> None:
        if node in self._stored_nodes:
            return
        hosts = self._host_ips.get(node) or {}
        if not hosts:
            self._host_ips.pop(node, None)
            if node in self._implicit_nodes:
                del self._implicit_nodes[node]
                self.builder.set_node(node, None)
            return
        address = min(hosts.values())
        if self._implicit_nodes.get(node) == address:
            return  # the builder holds this very record (each of a node's pods would rebuild it)
        self._implicit_nodes[node] = address
        self.builder.set_node(node, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}, "status": {
            "addresses": [{"type": "InternalIP", "address": address}]}})

    def _for_slices(self, name: str) -> JSON | None:
        """The pod as slices are derived from it: with no kubelet to report readiness, a pod
        whose status has no Ready condition counts as ready (one with Ready False does not)."""
        pod = self._with_local_facts(name)
        if pod is None:
            return None
        conditions = list(pod["status"].get("conditions") or [])
        if not any(c.get("type") == "Ready" for c in conditions):
            conditions.append({"type": "Ready", "status": "True"})
        return {**pod, "status": {**pod["status"], "conditions": conditions}}


    def _with_local_facts(self, name: str) -> JSON | None:
        pod = self._pods.get(name)
        if pod is None:
            if name not in self._addresses:
                return None
            namespace, _, pod_name = name.partition("/")  # a local endpoint no object describes
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "namespace": namespace}}
        spec = dict(pod.get("spec") or {})
        status = dict(pod.get("status") or {})
        if not spec.get("nodeName"):
            spec["nodeName"] = self.node_name
        if not status.get("podIPs") and not status.get("podIP") and name in self._addresses:
            status["podIPs"] = [{"ip": ip} for ip in self._addresses[name]]
        return {**pod, "spec": spec, "status": status}

    # --- the stream ----------------------------------------------------------------------------
    def commit(self) -> Delta | None:
        """Number what the recorded pods need, then append the changes as one delta."""
        for key, obj in self.slices.take_changes().items():  # the services this batch touched, once each
            self.builder.set_endpoint_slice(key, obj)
        self._allocate()
        return self.log.apply(self.builder.take_changes(), self.clock())

    def _allocate(self) -> None:
        wanted = self.builder.pod_labels
        # Only the pods the builder touched since the last commit (it forgets them in
        # `take_changes`, which runs after this): a CNI ADD costs the same with 10 or 10,000
        # pods stored. In key order: numbering independent of arrival order. A failed
        # allocation leaves them touched: the next commit compares them again.
        touched = self.builder.labels_touched
        changed = sorted(pod for pod in touched if pod in wanted and self._held.get(pod) != wanted[pod])
        gone = sorted(pod for pod in touched if pod not in wanted and pod in self._held)
        now = self.clock()
        for pod in changed:
            labels, old = wanted[pod], self._held.get(pod)
            self.allocator.acquire(labels, pod)
            if old is not None:
                self.allocator.release(old, pod, now)
            self._held[pod] = labels
        for pod in gone:
            self.allocator.release(self._held.pop(pod), pod, now)
        self.sync_identities()

    def sync_identities(self) -> None:
        """Feed the builder the allocator's numbering (after an allocation or a gc)."""
        numbering = self.allocator.items()
        for number in [n for n in self._fed if numbering.get(n) != self._fed[n]]:
            del self._fed[number]
            self.builder.set_identity(str(number), None)
        for number, labels in numbering.items():
            if number not in self._fed:
                self._fed[number] = labels
                self.builder.set_identity(str(number), identity_object(number, labels))

    # --- reading -------------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, dict[StateKey, StateObject]]:
        version, objects = self.log.snapshot()
        return version, {(o.kind, o.key): o for o in objects}
