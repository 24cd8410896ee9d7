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
        self.builder = StateBuilder()
        self.clock = clock
        self._pods: dict[str, JSON] = {}  # builder key -> the stored pod (before local facts)
        self._addresses: dict[str, tuple[str, ...]] = {}  # builder key -> local endpoint IPs
        self._held: dict[str, LabelSet] = {}  # pod key -> labels it holds an identity for
        self._fed: dict[int, LabelSet] = {}  # identity objects fed to the builder
        self.slices = EndpointSliceDeriver()  # the EndpointSlice controller's work, locally

    # --- feeding -------------------------------------------------------------------------------
    def on_object(self, kind: str, key: ObjectKey, obj: BaseModel | JSON | None) -> None:
        setter = _SETTERS.get(kind)
        if setter is None:
            return  # a kind the stream does not carry
        name = builder_key(key)
        data = object_json(kind, key, obj) if obj is not None else None
        if kind == "Pod":
            if data is None:
                self._pods.pop(name, None)
            else:
                self._pods[name] = data
            data = self._with_local_facts(name)
        getattr(self.builder, setter)(name, data)
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
        if name in self._pods:
            self.builder.set_pod(name, self._with_local_facts(name))
            self.slices.set_pod(name, self._for_slices(name))

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
            return None
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
        wanted = dict(self.builder.pod_labels)
        now = self.clock()
        for pod, labels in sorted(wanted.items()):  # in key order: numbering independent of arrival order
            old = self._held.get(pod)
            if old == labels:
                continue
            self.allocator.acquire(labels, pod)
            if old is not None:
                self.allocator.release(old, pod, now)
            self._held[pod] = labels
        for pod in [p for p in self._held if p not in wanted]:
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
