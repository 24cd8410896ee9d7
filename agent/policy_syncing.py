"""Policy manager: namespaces, pods, policies and local endpoints -> ipcache and policy maps.

Felix-style: `on_*` calls record changes cheaply (the pure `PolicyResolver` recomputes only
the endpoints a change affects); `apply()` turns the affected endpoints into LPM entries, tells
the generic map manager (`map_managing.MapManager`) what the policy, ipcache and CIDR maps
should now hold for them, and the manager writes only the difference to the kernel, in the
plan order of `membrane.map_plan` that never opens a window: new policy entries first, then
ipcache, CIDR map and endpoint identities, then stale ipcache and CIDR entries, then stale
policy entries. So during an update the datapath sees the old or the new rules, or their union
for an instant (never neither: allowed traffic is never dropped by the update itself).

Pods of other nodes become ipcache entries that name their node's IP as tunnel endpoint (the
datapath sends them through the VXLAN overlay); the node's IP comes from the pod's
`status.hostIP`, else from the node's addresses (`on_node`: Node objects, streamed in Kubernetes
mode, applied in standalone mode). Other nodes' IPs are REMOTE_NODE entries flagged NODE: the
overlay accepts VXLAN only from those. Other nodes' pod CIDRs name their node as tunnel endpoint
too, so the overlay knows which node owns a pod address its ipcache has no /32 for yet (the
overlay takes a VNI's identity only for inner sources the sending node owns: docs/trust-model.md).

Capacity: before writing, the map manager counts what each map (policy, ipcache, CIDR) would hold at
the peak of the update (new keys are written before stale ones are deleted) and refuses a
change that does not fit with `MapCapacityError`, writing nothing: the maps keep the old state
and the caller decides (standalone mode rolls the store back; Kubernetes mode keeps the old
state and does not ack). After every update that wrote anything, the datapath's policy
revision is bumped, last: established flows are then judged again on their next packet, so a
flow never keeps a verdict the maps no longer give.

ipBlock prefixes are in the ipcache (the identity of addresses that are no pod or node) and in
the CIDR map (`desired_cidrs`): the CIDR identity of every address, pods included, which the
datapath judges alongside the peer's identity so that ipBlocks select pod addresses too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Any
from typing import Protocol as TypingProtocol

from membrane.delta import Delta
from membrane.identities import LabelSet, ReservedIdentity, cidr_allocator
from membrane.ipcache import (
    NODE_ENTRY,
    IpcacheInputs,
    IpcachePod,
    IpcacheTarget,
    address_entries,
    desired_ipcache,
    prefix_entry,
)
from membrane.k8s_models import Namespace, NetworkPolicy, ObjectRef, Pod
from membrane.policy import (
    Direction,
    FlatKey,
    FlatValue,
    NamespaceInfo,
    PodInfo,
    PolicyDelta,
    PolicyResolver,
    Protocol,
    RuleTable,
    TraceResult,
    Verdict,
    flatten_endpoint,
    trace,
)

from .identity_sources import IdentitySource
from .map_managing import MapCapacityError, MapManager
from .pod_records import PodRecord, as_record, namespace_labels_of

__all__ = ["HOST_RULE_REF", "NODE_ENTRY", "IpcacheTarget", "LocalEndpoint", "MapCapacityError", "PolicyManager",
           "PolicyMapsPort"]

log = logging.getLogger("membrane.policy")

HOST_RULE_REF = 0  # the host-allow entry is nobody's rule: flows name it "host default"


MAP_ROLES = ("policy", "ipcache", "cidr")  # the maps this manager owns (ipcache values: IpcacheTarget)


class PolicyMapsPort(TypingProtocol):
    """The policy, ipcache and CIDR maps by role, and the policy revision."""

    def capacity(self, role: str) -> int | None: ...
    def bump_policy_revision(self) -> int: ...
    def read_map(self, role: str) -> dict[Any, Any]: ...
    def update_map(self, role: str, entries: Mapping[Any, Any]) -> None: ...
    def delete_map(self, role: str, keys: Sequence[Any]) -> int: ...


@dataclass(frozen=True)
class LocalEndpoint:
    key: str  # endpoint manager key (container/ifname)
    endpoint_id: int
    ip: IPv4Address


class PolicyManager:
    def __init__(self, identities: IdentitySource, maps: PolicyMapsPort,
                 set_endpoint_identity: Callable[[str, int], None],
                 host_addresses: Callable[[], Iterable[str]], allow_host: bool = True,
                 node_name: str | None = None) -> None:
        self.identities = identities
        self.maps = maps
        self.set_endpoint_identity = set_endpoint_identity
        self.host_addresses = host_addresses
        self.allow_host = allow_host
        self.node_name = node_name  # this node: its pods are never behind a tunnel
        self.node_ips: dict[str, IPv4Address] = {}  # other nodes' underlay addresses (on_node)
        self.node_cidrs: dict[str, IPv4Network] = {}  # nodes' pod CIDRs (on_node)
        self.lock = threading.RLock()
        # Deferred: updates only mark endpoints dirty, `apply()` computes once per batch. Interest:
        # only local endpoints get policy entries computed; every pod stays a peer.
        self.resolver = PolicyResolver(cidr_allocator(), deferred=True, interest=())
        self.rules = RuleTable()
        self.namespaces: dict[str, dict[str, str]] = {}
        self.pods: dict[ObjectRef, PodRecord] = {}
        self.local: dict[ObjectRef, LocalEndpoint] = {}
        # Desired vs written contents of the maps; writes in the gap-free plan order.
        self.mapman = MapManager(maps, MAP_ROLES, steps={"endpoint_identity": self._write_identities})
        self.written_policy: dict[ObjectRef, dict[FlatKey, FlatValue]] = {}  # each endpoint's, as applied
        # CIDR map changes since the last apply (prefix -> identity, None: removed); None means
        # compare everything (start, resync). See `_desire_cidrs`.
        self._cidr_changes: dict[IPv4Network, int | None] | None = None
        self.dirty: set[ObjectRef] = set()
        self.last_apply_seconds = 0.0
        self.generation = 0  # bumped by every apply: readers (flow enrichment) drop their caches
        self.revision = 0  # the datapath's policy revision after the last apply that wrote
        self.refused = 0  # applies refused because a map would overflow
        # Incremental ipcache: each pod's entries, who claims each /32, and what changed since
        # the last apply (pods to re-derive, prefixes to re-decide); see `_desire_ipcache`.
        self._ip_pods: dict[ObjectRef, tuple[dict[IPv4Network, IpcacheTarget], IPv4Address | None]] = {}
        self._ip_owners: dict[IPv4Network, dict[ObjectRef, IpcacheTarget]] = {}
        self._tunnels: dict[IPv4Address, int] = {}  # tunnel endpoint -> pods behind it
        self._pod_node: dict[ObjectRef, str] = {}
        self._pods_by_node: dict[str, set[ObjectRef]] = {}
        self._own: set[str] = set()
        self._remote: set[IPv4Address] = set()
        self._ipcache: dict[IPv4Network, IpcacheTarget] = {}  # desired, kept incrementally
        self._ip_dirty_pods: set[ObjectRef] = set()
        self._ip_dirty_nets: set[IPv4Network] = set()
        self._cidr_dirty_nets: set[IPv4Network] = set()  # ipBlock prefixes changed: pod CIDRs under them
        self._pod_cidrs: dict[IPv4Network, IPv4Address] = {}  # other nodes' pod CIDR -> node IP, as applied

    @property
    def written_ipcache(self) -> dict[IPv4Network, IpcacheTarget]:
        return self.mapman.written["ipcache"]

    @property
    def written_cidrs(self) -> dict[IPv4Network, int]:
        return self.mapman.written["cidr"]

    # --- recording changes (cheap) ------------------------------------------------------
    def on_namespace(self, name: str, obj: Namespace | Mapping[str, str] | None) -> None:
        """A namespace (its object, or its labels as a stream record has them) or None: gone."""
        labels = namespace_labels_of(obj)
        with self.lock:
            if labels is None:
                self.namespaces.pop(name, None)
            else:
                self.namespaces[name] = dict(labels)
            self._record(self.resolver.update_namespace(NamespaceInfo.of(name, self.namespaces.get(name, {}))))
            for ref in [r for r in set(self.pods) | set(self.local) if r.namespace == name]:
                self._refresh_pod(ref)  # identity labels include the namespace's labels

    def on_pod(self, ref: ObjectRef, obj: Pod | PodRecord | None) -> None:
        """A pod (a record; a Pod object is turned into one) or None: gone."""
        record = as_record(obj)
        with self.lock:
            if record is None:
                self.pods.pop(ref, None)
            else:
                self.pods[ref] = record
            node = record.node_name if record is not None else None
            old_node = self._pod_node.pop(ref, None)
            if old_node is not None:
                self._pods_by_node[old_node].discard(ref)
            if node is not None:
                self._pod_node[ref] = node
                self._pods_by_node.setdefault(node, set()).add(ref)
            self._refresh_pod(ref)

    def on_node(self, name: str, addresses: Iterable[str], pod_cidr: str | None = None) -> None:
        """A node's addresses (first IPv4 one = its tunnel endpoint, the one address VXLAN is
        accepted from) and pod CIDR; no addresses: the node is gone."""
        with self.lock:
            ip = next((a for a in (_ipv4(x) for x in addresses) if a is not None), None)
            if ip is None:
                self.node_ips.pop(name, None)
            else:
                self.node_ips[name] = ip
            cidr = _ipv4_net(pod_cidr) if ip is not None and pod_cidr else None
            if cidr is None:
                self.node_cidrs.pop(name, None)
            else:
                self.node_cidrs[name] = cidr
            self._ip_dirty_pods.update(self._pods_by_node.get(name, ()))  # their tunnel endpoint

    def on_policy(self, ref: ObjectRef, obj: NetworkPolicy | None) -> None:
        with self.lock:
            self._record(self.resolver.update_policy(obj) if obj is not None else self.resolver.delete_policy(ref))

    def on_endpoint(self, ref: ObjectRef, endpoint: LocalEndpoint | None) -> int | None:
        """A local endpoint appeared or went; returns its identity."""
        with self.lock:
            if endpoint is None:
                self.local.pop(ref, None)
            else:
                self.local[ref] = endpoint
            self.dirty.add(ref)
            identity = self._refresh_pod(ref)
            self._record(self.resolver.set_interest(ref, endpoint is not None))
            return identity

    def _record(self, delta: PolicyDelta) -> None:
        self.dirty.update(delta.endpoints)
        self._note_cidrs(delta)
        for prefix in (*delta.cidr_upserts, *delta.cidr_removals):
            net = ip_network(prefix)
            if isinstance(net, IPv4Network):
                self._ip_dirty_nets.add(net)
                self._cidr_dirty_nets.add(net)

    def _refresh_pod(self, ref: ObjectRef) -> int | None:
        self._ip_dirty_pods.add(ref)
        pod, local = self.pods.get(ref), self.local.get(ref)
        if pod is None and local is None:
            self._record(self.resolver.delete_pod(ref))
            self.identities.release(ref)
            return None
        if ref.namespace not in self.namespaces and ref.namespace:
            self._record(self.resolver.update_namespace(NamespaceInfo.of(ref.namespace, {})))
        labels = pod.label_map if pod is not None else {}
        identity = self.identities.assign(ref, labels, self.namespaces.get(ref.namespace, {}))
        ips = (str(local.ip),) if local is not None else pod.ips if pod is not None else ()
        info = PodInfo(ref, labels, identity, ips, pod.named_ports if pod is not None else (),
                       pod.host_network if pod is not None else False)
        self._record(self.resolver.update_pod(info))
        return identity

    # --- desired state (pure given the recorded inputs) ----------------------------------
    def desired_endpoint(self, ref: ObjectRef) -> dict[FlatKey, FlatValue]:
        local = self.local.get(ref)
        policy = self.resolver.endpoint(ref)
        if local is None or policy is None:
            return {}
        flat = flatten_endpoint(local.endpoint_id, policy, self.rules)
        if self.allow_host and policy.selected_by.get(Direction.INGRESS):
            # kubelet probes come from the node: allowed unless configured otherwise.
            host = FlatKey(local.endpoint_id, int(ReservedIdentity.HOST), int(Direction.INGRESS), int(Protocol.ANY), 0, 0)
            flat.setdefault(host, FlatValue(int(Verdict.ALLOW), HOST_RULE_REF))
        return flat

    def tunnel_endpoint(self, ref: ObjectRef) -> IPv4Address | None:
        """The IP of the node a pod runs on, when that is another node (None: here or unknown)."""
        pod = self.pods.get(ref)
        if ref in self.local or pod is None:
            return None
        node = pod.node_name
        if node is not None and node == self.node_name:
            return None
        ip = _ipv4(pod.host_ip) if pod.host_ip else None
        if ip is None and node is not None:
            ip = self.node_ips.get(node)
        return ip

    def remote_pod_cidrs(self, own: set[str]) -> dict[IPv4Network, IPv4Address]:
        """Other nodes' pod CIDRs -> their node's IP (the owner of every address inside)."""
        return {cidr: self.node_ips[name] for name, cidr in self.node_cidrs.items()
                if name != self.node_name and name in self.node_ips and str(self.node_ips[name]) not in own}

    def _prefix_entry(self, net: IPv4Network, identity: int | None,
                      pod_cidrs: dict[IPv4Network, IPv4Address]) -> IpcacheTarget | None:
        """An ipBlock prefix or another node's pod CIDR (membrane.ipcache.prefix_entry)."""
        return prefix_entry(net, identity, pod_cidrs, self.resolver.cidrs.identity_of)

    def ipcache_pod(self, ref: ObjectRef) -> IpcachePod | None:
        """A pod as the ipcache sees it (None: no such pod)."""
        pod = self.resolver.inputs.pods.get(ref)
        if pod is None:
            return None
        return IpcachePod(pod.identity, pod.ips, pod.host_network, self.tunnel_endpoint(ref), ref in self.local)

    def ipcache_inputs(self) -> IpcacheInputs:
        """Everything the ipcache is derived from (membrane.ipcache.desired_ipcache's inputs)."""
        own = set(self.host_addresses())
        return IpcacheInputs(
            own_addresses=own,
            remote_nodes={ip for name, ip in self.node_ips.items() if name != self.node_name},
            pod_cidrs=self.remote_pod_cidrs(own),
            cidr_identities={net: ident for prefix, ident in self.resolver.cidrs.identities().items()
                             if isinstance(net := ip_network(prefix), IPv4Network)},
            pods=[p for ref in self.resolver.inputs.pods if (p := self.ipcache_pod(ref)) is not None])

    def desired_ipcache(self) -> dict[IPv4Network, IpcacheTarget]:
        """The whole ipcache, derived from scratch (the oracle of the incremental `_desire_ipcache`)."""
        return desired_ipcache(self.ipcache_inputs())

    # --- CIDR identities of ipBlock prefixes (the datapath's CIDR map) ----------------------
    def desired_cidrs(self) -> dict[IPv4Network, int]:
        """ipBlock prefix -> CIDR identity, IPv4 (the datapath is IPv4 only)."""
        cidrs: dict[IPv4Network, int] = {}
        for prefix, identity in self.resolver.cidrs.identities().items():
            net = ip_network(prefix)
            if isinstance(net, IPv4Network):
                cidrs[net] = identity
        return cidrs

    def _note_cidrs(self, delta: PolicyDelta) -> None:
        """Remember the resolver's CIDR table changes for the next apply (IPv4 only)."""
        if self._cidr_changes is None or not (delta.cidr_upserts or delta.cidr_removals):
            return
        for prefix in delta.cidr_removals:
            net = ip_network(prefix)
            if isinstance(net, IPv4Network):
                self._cidr_changes[net] = None
        for prefix, identity in delta.cidr_upserts.items():
            net = ip_network(prefix)
            if isinstance(net, IPv4Network):
                self._cidr_changes[net] = identity

    def _desire_cidrs(self) -> None:
        """Tell the map manager what the CIDR map should hold (`desired_cidrs()`), from the
        changes recorded since the last apply only (the whole table after a start or resync)."""
        changes, self._cidr_changes = self._cidr_changes, {}
        if changes is None:
            self.mapman.replace("cidr", self.desired_cidrs())
            return
        for net, ident in changes.items():
            if ident is None:
                self.mapman.remove("cidr", net)
            else:
                self.mapman.set("cidr", net, ident)

    # --- the ipcache, incrementally -----------------------------------------------------------
    def _pod_ipcache(self, ref: ObjectRef, own: set[str]) -> tuple[dict[IPv4Network, IpcacheTarget], IPv4Address | None]:
        """One pod's ipcache entries and tunnel endpoint (as `desired_ipcache` derives them)."""
        pod = self.resolver.inputs.pods.get(ref)
        if pod is None or pod.identity is None or pod.host_network:
            return {}, None
        return address_entries(pod.identity, pod.ips, self.tunnel_endpoint(ref), own)

    def _desire_ipcache(self) -> None:
        """Tell the map manager what the ipcache should hold, from what changed since the last
        apply only.

        Same result as `mapman.replace("ipcache", desired_ipcache())` (host addresses beat other
        nodes' addresses beat pods beat ipBlock prefixes), without walking every pod: pods
        touched by an update are re-derived, then only their prefixes (and changed node, host
        and CIDR prefixes) are decided again.
        """
        own = set(self.host_addresses())
        if own != self._own:  # rare: every pod's "is that tunnel us?" may change
            self._ip_dirty_nets.update(IPv4Network(f"{a}/32") for a in own ^ self._own)
            self._ip_dirty_pods.update(self._ip_pods)
            self._ip_dirty_pods.update(self.resolver.inputs.pods)
            self._own = own
        dirty = self._ip_dirty_nets
        for ref in self._ip_dirty_pods:
            old_entries, old_tunnel = self._ip_pods.pop(ref, ({}, None))
            entries, tunnel = self._pod_ipcache(ref, own)
            for net in old_entries:
                owners = self._ip_owners[net]
                del owners[ref]
                if not owners:
                    del self._ip_owners[net]
                dirty.add(net)
            for net, target in entries.items():
                self._ip_owners.setdefault(net, {})[ref] = target
                dirty.add(net)
            if old_tunnel is not None:
                self._tunnels[old_tunnel] -= 1
                if not self._tunnels[old_tunnel]:
                    del self._tunnels[old_tunnel]
            if tunnel is not None:
                self._tunnels[tunnel] = self._tunnels.get(tunnel, 0) + 1
            if entries or tunnel is not None:
                self._ip_pods[ref] = (entries, tunnel)
        self._ip_dirty_pods = set()
        remote = {ip for name, ip in self.node_ips.items() if name != self.node_name} | set(self._tunnels)
        if remote != self._remote:
            dirty.update(IPv4Network(f"{ip}/32") for ip in remote ^ self._remote)
            self._remote = remote
        pod_cidrs = self.remote_pod_cidrs(own)
        if pod_cidrs != self._pod_cidrs:  # a node's pod CIDR came, went or moved: it and what is inside
            changed = {c for c in {*pod_cidrs, *self._pod_cidrs} if pod_cidrs.get(c) != self._pod_cidrs.get(c)}
            dirty.update(changed)
            dirty.update(inner for prefix in self.resolver.cidrs.identities()
                         if isinstance(inner := ip_network(prefix), IPv4Network)
                         and any(inner.subnet_of(c) for c in changed))
            self._pod_cidrs = pod_cidrs
        if self._cidr_dirty_nets:  # a pod CIDR's identity is the one of the ipBlock prefix covering it
            dirty.update(c for c in pod_cidrs if any(c.subnet_of(n) for n in self._cidr_dirty_nets))
            self._cidr_dirty_nets = set()
        own_nets = {IPv4Network(f"{a}/32") for a in own}
        remote_nets = {IPv4Network(f"{ip}/32") for ip in remote} if dirty else set()
        for net in dirty:
            want: IpcacheTarget | None
            if net in own_nets:
                want = int(ReservedIdentity.HOST)
            elif net in remote_nets:
                want = NODE_ENTRY
            elif net in self._ip_owners:
                owners = self._ip_owners[net]
                local = [t for r, t in owners.items() if r in self.local]  # a stale duplicate never wins
                want = local[-1] if local else next(reversed(owners.values()))
            else:
                want = self._prefix_entry(net, self.resolver.cidrs.identity_of(net), pod_cidrs)
            if want is None:
                self._ipcache.pop(net, None)
                self.mapman.remove("ipcache", net)
            else:
                self._ipcache[net] = want
                self.mapman.set("ipcache", net, want)
        self._ip_dirty_nets = set()

    def _reset_ipcache(self) -> None:
        """Forget the incremental state: the next apply re-derives every prefix (resync)."""
        self._ip_pods.clear()
        self._ip_owners.clear()
        self._tunnels.clear()
        self._own = set()
        self._remote = set()
        self._pod_cidrs = {}
        self._cidr_dirty_nets = set()
        self._ip_dirty_pods = set(self.resolver.inputs.pods)
        self._ip_dirty_nets = set(self.written_ipcache) | set(self._ipcache)
        self._ip_dirty_nets.update(net for prefix in self.resolver.cidrs.identities()
                                   if isinstance(net := ip_network(prefix), IPv4Network))
        self._ipcache = {}

    # --- writing the difference -------------------------------------------------------------
    def apply(self) -> dict[str, int]:
        """Write what changed since the last apply; raises MapCapacityError (writing nothing,
        keeping the recorded changes pending) when a map would overflow."""
        with self.lock:
            started = time.perf_counter()
            self.resolver.flush()
            self.dirty.update(self.resolver.take_changed())
            new_written = {}
            for ref in sorted(self.dirty):
                want = self.desired_endpoint(ref)
                old = self.written_policy.get(ref, {})
                for key in old:
                    if key not in want:
                        self.mapman.remove("policy", key)
                for key, value in want.items():  # all of them: the manager diffs
                    self.mapman.set("policy", key, value)
                new_written[ref] = want
            self._desire_ipcache()
            self._desire_cidrs()
            identities = {}
            for ref, local in self.local.items():
                identity = self.identities.identity_of(ref)
                if identity is not None:
                    identities[local.key] = identity
            try:
                written = self.mapman.apply({"endpoint_identity": Delta(identities, [])})
            except MapCapacityError:
                # Nothing written; the next apply compares everything again (the incremental
                # ipcache and CIDR state already moved on to the refused inputs).
                self.mapman.discard()
                self._reset_ipcache()
                self._cidr_changes = None
                self.refused += 1
                raise
            for ref, want in new_written.items():
                if want:
                    self.written_policy[ref] = want
                else:
                    self.written_policy.pop(ref, None)
            self.dirty.clear()
            if any(written.values()):
                # Last, once everything above has landed: established flows get judged again.
                self.revision = self.maps.bump_policy_revision()
            self.generation += 1
            self.last_apply_seconds = time.perf_counter() - started
            policy, ipcache = written["policy"], written["ipcache"]
            return {"policy_upserts": len(policy.upserts), "policy_deletes": len(policy.deletes),
                    "ipcache_upserts": len(ipcache.upserts), "ipcache_deletes": len(ipcache.deletes)}

    def _write_identities(self, identities: Mapping[str, int]) -> None:
        """The endpoints' identities: a step of the plan, written by the endpoint manager."""
        for key, identity in identities.items():
            self.set_endpoint_identity(key, identity)

    def resync(self) -> dict[str, int]:
        """Compare everything with the kernel's maps and repair (start-up, periodic)."""
        with self.lock:
            drift = self.mapman.resync()
            by_endpoint: dict[int, dict[FlatKey, FlatValue]] = {}
            for key, value in self.mapman.written["policy"].items():
                by_endpoint.setdefault(key.endpoint_id, {})[key] = value
            ids = {local.endpoint_id: ref for ref, local in self.local.items()}
            self.written_policy = {ids[eid]: entries for eid, entries in by_endpoint.items() if eid in ids}
            strays = [key for eid, entries in by_endpoint.items() if eid not in ids for key in entries]
            self._reset_ipcache()
            self._cidr_changes = None
            self.dirty.update(self.local)
            self.dirty.update(self.written_policy)
            self.mapman.delete_now("policy", strays)  # first: they take room the apply may need
            report = self.apply()
            report["stray_policy_entries"] = len(strays)
            for role, count in drift.items():  # membrane_map_resync_repairs_total{map}
                report[f"repaired_{role}"] = count
            return report

    def is_local(self, ref: ObjectRef) -> bool:
        """Whether the pod has an endpoint on this node."""
        with self.lock:
            return ref in self.local

    # --- the read-only query interface (flows, membranectl, trace: agent/policy_queries.py) ----
    # Readers never take this manager's lock or read its fields: these answer from a consistent
    # view, each under the lock, and return copies.
    def peer_pods(self) -> list[PodInfo]:
        """Every pod policy knows (local endpoints and peers), as the engine sees it."""
        with self.lock:
            return list(self.resolver.inputs.pods.values())

    def pods_at(self, ip: str) -> list[ObjectRef]:
        with self.lock:
            return [pod.ref for pod in self.resolver.inputs.pods.values() if ip in pod.ips]

    def identity_labels(self, identity: int) -> LabelSet | None:
        with self.lock:
            labels: LabelSet | None = self.identities.allocator.labels_of(identity)
            return labels

    def identity_listing(self) -> list[dict[str, object]]:
        with self.lock:
            return self.identities.listing()

    def selecting(self, policy: ObjectRef) -> dict[Direction, list[ObjectRef]]:
        """The pods a policy isolates, per direction (every pod of the cluster)."""
        with self.lock:
            return {d: list(pods) for d, pods in self.resolver.selecting(policy).items()}

    def isolating(self, pod: ObjectRef, direction: Direction) -> list[ObjectRef]:
        """The policies isolating a pod for `direction`."""
        with self.lock:
            policy = self.resolver.endpoint(pod)
            return sorted(policy.selected_by.get(direction, ()), key=str) if policy is not None else []

    def rule_policies(self, rule_ref: int) -> list[str]:
        """The policies a map entry's rule reference stands for."""
        with self.lock:
            return sorted(str(ref) for ref in self.rules.policies(rule_ref))

    def trace(self, src: ObjectRef | str, dst: ObjectRef | str, port: str, protocol: str) -> TraceResult:
        """What the datapath decides for a new connection: the two parties' endpoint policies
        computed on demand (entries exist for this node's endpoints only)."""
        with self.lock:
            parties = [*(self._pods_of(src)), *(self._pods_of(dst))]
            return trace(self.resolver.desired_for(parties), self.resolver.inputs.pods, src, dst, port, protocol)

    def _pods_of(self, party: ObjectRef | str) -> list[ObjectRef]:
        if isinstance(party, ObjectRef):
            return [party]
        return [pod.ref for pod in self.resolver.inputs.pods.values() if party in pod.ips]


def _ipv4_net(text: str) -> IPv4Network | None:
    try:
        return IPv4Network(text)
    except ValueError:  # IPv6 or garbage: no pod CIDR of ours
        return None


def _ipv4(text: str) -> IPv4Address | None:
    try:
        return IPv4Address(text)
    except ValueError:  # IPv6 or garbage: not a tunnel endpoint of ours
        return None
