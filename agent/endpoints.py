"""Endpoint manager: one endpoint per pod interface, from CNI ADD to DEL.

Holds the endpoint records (persisted, one row each in the state store), the node's IPAM pool
(its allocations are the records' addresses; only the cursor is stored), and keeps the
datapath's endpoint map equal to what the records say. Kernel and netlink work goes
through the adapters it is given, so tests can hand it fakes.

Durability: the endpoint record is the truth about who holds an address. ADD commits it and
the IPAM cursor in one transaction (agent/state_db.py) before kubelet gets its answer, DEL
deletes it in one; `restore()` rebuilds the IPAM allocations from the records. So a crash at
any point leaves neither an endpoint without its address nor an address without its endpoint.

The kernel is ground truth when a record is missing or damaged: every completed ADD puts the
owner on its host veth's link alias (`link_alias`: container id, interface, pod, netns; set
right after the record is saved) and the pinned endpoint map holds its address, endpoint id,
identity and MACs, so `restore()` rebuilds the record from the two (a damaged one is set aside
as `.damaged`). A link without a record and without that alias is an ADD that never finished
(kubelet was told it failed) and is removed; a wired pod is never torn down because a file
went missing.

Concurrency: ADD/DEL of one endpoint are serialised (striped locks); `lock` guards the
in-memory state (records, IPAM, what was written to the endpoint map) and is held only for
bookkeeping, never across netlink, fsync or policy work, so concurrent ADDs overlap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Protocol

from pydantic import BaseModel

from membrane.delta import Delta, diff
from membrane.ipam import IpamPool
from membrane.k8s_models import ObjectRef

from . import failpoints
from .config import AgentConfig
from .datapath.endpoints import EndpointEntry
from .netlinking import LinkExists, PodLink
from .state_db import StateDb

log = logging.getLogger("membrane.endpoints")

HOST_IFNAME_PREFIX = "mb"
ALIAS_PREFIX = "membrane1 "
ALIAS_MAX = 255  # IFALIASZ - 1
_KEY_STRIPES = 64
UNKNOWN_IDENTITY = 0  # until the identity issue lands: no identity assigned yet
IPAM_DOC = "ipam"  # the allocation cursor (the allocations are the endpoint rows' addresses)


class Endpoint(BaseModel):
    container_id: str
    ifname: str
    netns: str
    host_ifname: str
    host_ifindex: int
    host_mac: str
    pod_mac: str
    ip: IPv4Address
    endpoint_id: int
    namespace: str = ""
    pod: str = ""
    identity: int = UNKNOWN_IDENTITY
    state: str = "ready"  # ready | link-missing
    created: float = 0.0

    @property
    def key(self) -> str:
        return endpoint_key(self.container_id, self.ifname)

    @property
    def pod_ref(self) -> ObjectRef:
        """The pod this endpoint belongs to; sandboxes without pod metadata stand alone."""
        return ObjectRef(self.namespace or "default", self.pod or self.container_id)


class NetlinkPort(Protocol):
    def create_pod_link(self, host_ifname: str, netns: str, pod_ifname: str, address: IPv4Address,
                        mtu: int) -> PodLink: ...
    def set_alias(self, ifindex: int, alias: str) -> None: ...
    def delete_link(self, name: str) -> bool: ...
    def ifindex(self, name: str) -> int | None: ...
    def attach(self, ifindex: int, from_container: tuple[int, str], to_container: tuple[int, str]) -> None: ...
    def host_links(self, prefix: str) -> dict[str, int]: ...
    def host_link_aliases(self, prefix: str) -> dict[str, tuple[int, str, str]]: ...


class EndpointMapPort(Protocol):
    def read_endpoints(self) -> dict[IPv4Address, EndpointEntry]: ...
    def write_endpoints(self, delta: Delta[IPv4Address, EndpointEntry]) -> None: ...
    def programs(self) -> tuple[tuple[int, str], tuple[int, str]]: ...


def endpoint_key(container_id: str, ifname: str) -> str:
    return f"{container_id}/{ifname}"


def host_ifname_for(container_id: str, ifname: str) -> str:
    digest = hashlib.sha256(endpoint_key(container_id, ifname).encode()).hexdigest()
    return HOST_IFNAME_PREFIX + digest[:12]


def link_alias(container_id: str, ifname: str, namespace: str, pod: str, netns: str) -> str:
    """Who owns a host veth, in its alias. When even without the netns path it does not fit,
    only the mark of a completed ADD: such a link is kept, never rebuilt nor removed."""
    owner = {"c": container_id, "i": ifname, "n": namespace, "p": pod, "s": netns}
    for drop in (None, "s"):
        if drop:
            owner.pop(drop)
        text = ALIAS_PREFIX + json.dumps(owner, separators=(",", ":"), sort_keys=True)
        if len(text.encode()) <= ALIAS_MAX:
            return text
    return ALIAS_PREFIX + "{}"


def parse_alias(alias: str) -> dict[str, str] | None:
    if not alias.startswith(ALIAS_PREFIX):
        return None
    try:
        owner = json.loads(alias[len(ALIAS_PREFIX):])
    except ValueError:
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("c"), str) or not isinstance(owner.get("i"), str):
        return None
    return {k: str(v) for k, v in owner.items()}


class EndpointManager:
    def __init__(self, config: AgentConfig, netlink: NetlinkPort, datapath: EndpointMapPort,
                 on_change: Callable[[Endpoint, bool], int | None] | None = None,
                 db: StateDb | None = None) -> None:
        self.config = config
        self.netlink = netlink
        self.datapath = datapath
        # Called before an ADD publishes its map entry (returns the pod's identity, or None to
        # keep the one given) and after a DEL.
        self.on_change: Callable[[Endpoint, bool], int | None] = on_change or (lambda ep, present: None)
        self.lock = threading.RLock()
        self._key_locks = [threading.RLock() for _ in range(_KEY_STRIPES)]
        self._pending: dict[str, int] = {}  # ADDs in flight: key -> endpoint id
        self._late_identity: dict[str, int] = {}  # identity changes that met an ADD in flight
        self.written: dict[IPv4Address, EndpointEntry] = {}  # our endpoint map entries as written
        self._ipam_dirty = False
        if db is None:
            from .state_storing import open_state  # a standalone manager (tests, tools)
            db = open_state(config.state_dir).db
        self.db = db
        self.endpoints: dict[str, Endpoint] = {}
        self.ipam = IpamPool(config.pod_cidr)

    # --- persistence -----------------------------------------------------------------
    def _ipam_doc(self) -> dict[str, object]:
        return {"cidr": str(self.ipam.cidr), "cursor": self.ipam.cursor}

    def _save(self, ep: Endpoint) -> None:
        """The endpoint's row and the IPAM cursor, in one transaction."""
        with self.lock:
            cursor = self._ipam_doc()
            self._ipam_dirty = False
        # Not durable=True: a commit lost to a power loss describes a pod the power loss took too
        # (the veth, the maps, the sandbox); a killed agent loses nothing (agent/state_db.py).
        with self.db.transaction():
            self.db.put_endpoint(ep.key, str(ep.ip), ep.model_dump(mode="json"))
            self.db.put_doc(IPAM_DOC, cursor)

    def _save_ipam(self) -> None:
        with self.lock:
            data = self._ipam_doc()
            self._ipam_dirty = False
        self.db.put_doc(IPAM_DOC, data)

    def flush_ipam(self) -> bool:
        """Persist the IPAM cursor when it moved (housekeeping, stop): allocations themselves
        are rebuilt from the records, so this is never needed before answering kubelet."""
        with self.lock:
            if not self._ipam_dirty:
                return False
        self._save_ipam()
        return True

    def _key_lock(self, key: str) -> threading.RLock:
        return self._key_locks[hash(key) % _KEY_STRIPES]

    def restore(self) -> dict[str, int]:
        """Reload records and IPAM, rebuild what is missing from the links and the endpoint
        map, reconcile them with the links that exist.

        Programs are not touched here: `reattach()` runs once policy state is back in the
        maps, so a new program never meets a policy map it would read as "deny all"."""
        with self.lock:
            report = {"endpoints": 0, "rebuilt_records": 0, "damaged_records": 0, "ipam_rebuilt": 0,
                      "unknown_links_kept": 0, "orphan_links": 0, "released_addresses": 0, "map_writes": 0}
            try:
                saved = self.db.get_doc(IPAM_DOC)
                self.ipam = IpamPool(self.config.pod_cidr)
                if isinstance(saved, dict) and isinstance(saved.get("cursor"), int):
                    self.ipam.cursor = saved["cursor"]
                elif saved is not None:
                    raise ValueError("not an IPAM cursor")
            except ValueError:
                self.ipam = IpamPool(self.config.pod_cidr)  # only a cursor: allocations come from the records
                report["ipam_rebuilt"] = 1
            for key, ip, data in self.db.endpoint_rows():
                try:
                    ep = Endpoint.model_validate(data)
                    if ep.key != key or str(ep.ip) != ip:
                        raise ValueError(f"row {key} holds the record of {ep.key}")
                except ValueError as exc:
                    log.warning("endpoint record damaged: rebuilt from the kernel if its link exists",
                                extra={"fields": {"endpoint": key, "error": str(exc).splitlines()[0]}})
                    self.db.delete_endpoint(key)
                    report["damaged_records"] += 1
                    continue
                self.endpoints[ep.key] = ep
            orphans = self._rebuild_from_kernel(report)
            owners = {ep.key: ep.ip for ep in self.endpoints.values()}
            for ep in self.endpoints.values():  # a record always owns its address
                if self.ipam.allocations.get(ep.ip) != ep.key:
                    self.ipam.allocations[ep.ip] = ep.key
            # Allocated by an ADD that died before its record was written: give them back.
            stale = [addr for addr, who in self.ipam.allocations.items() if owners.get(who) != addr
                     or addr not in self.config.pod_cidr]
            for addr in stale:
                del self.ipam.allocations[addr]
            self._save_ipam()
            for name in orphans:
                self.netlink.delete_link(name)
            for ep in self.endpoints.values():
                idx = self.netlink.ifindex(ep.host_ifname)
                if idx is None:
                    ep.state = "link-missing"
                    continue
                ep.host_ifindex, ep.state = idx, "ready"
            delta = self.sync_map()
            report.update(endpoints=len(self.endpoints), orphan_links=len(orphans), released_addresses=len(stale),
                          map_writes=len(delta.upserts) + len(delta.deletes))
            return report

    def _rebuild_from_kernel(self, report: dict[str, int]) -> list[str]:
        """Records for links no record claims, from their alias and the endpoint map; returns
        the links nobody knows (to delete)."""
        known = {ep.host_ifname for ep in self.endpoints.values()}
        links = {name: found for name, found in self.netlink.host_link_aliases(HOST_IFNAME_PREFIX).items()
                 if name not in known and len(name) == 14}
        if not links:
            return []
        in_map = {entry.ifindex: (ip, entry) for ip, entry in self.datapath.read_endpoints().items()}
        orphans = []
        for name, (ifindex, _, alias) in sorted(links.items()):
            owner = parse_alias(alias)
            found = in_map.get(ifindex)
            if owner is None and not alias:
                orphans.append(name)  # no owner on it: an ADD that died before it completed
                continue
            if owner is None or found is None or host_ifname_for(owner["c"], owner["i"]) != name:
                # Completed once (it carries an alias) but not rebuildable: keep it, never tear a
                # pod down; DEL of its container still removes it (the name is the key's hash).
                log.warning("endpoint link without a record kept: its owner or map entry is unknown",
                            extra={"fields": {"link": name, "alias": alias}})
                report["unknown_links_kept"] += 1
                continue
            ip, entry = found
            ep = Endpoint(container_id=owner["c"], ifname=owner["i"], netns=owner.get("s", ""), host_ifname=name,
                          host_ifindex=ifindex, host_mac=entry.host_mac, pod_mac=entry.pod_mac, ip=ip,
                          endpoint_id=entry.endpoint_id, namespace=owner.get("n", ""), pod=owner.get("p", ""),
                          identity=entry.identity, created=time.time())
            self.endpoints[ep.key] = ep
            self._save(ep)
            report["rebuilt_records"] += 1
            log.warning("endpoint record rebuilt from its link and the endpoint map",
                        extra={"fields": {"endpoint": ep.key, "ip": str(ip), "link": name}})
        return orphans

    def reattach(self) -> int:
        """Attach this start's programs to every restored endpoint (tc replace: never twice)."""
        with self.lock:
            ready = [ep for ep in self.endpoints.values() if ep.state == "ready"]
            for ep in ready:
                self.netlink.attach(ep.host_ifindex, *self.datapath.programs())
            return len(ready)

    def set_pod_cidr(self, cidr: IPv4Network) -> None:
        """Kubernetes mode: the node's PodCIDR as the operator assigned it (IPAM waits for it).

        Addresses held by endpoints stay theirs even outside a changed CIDR (the pods keep
        running); new pods get addresses from the new one."""
        with self.lock:
            self.config.pod_cidr = cidr
            if self.ipam.cidr == cidr:
                return
            pool = IpamPool(cidr)
            pool.allocations = {ep.ip: ep.key for ep in self.endpoints.values()}
            self.ipam = pool
            self._save_ipam()
            log.info("pod CIDR set", extra={"fields": {"pod_cidr": str(cidr), "held": len(pool.allocations)}})

    # --- desired state ---------------------------------------------------------------
    def desired_map(self) -> dict[IPv4Address, EndpointEntry]:
        return {ep.ip: EndpointEntry(ifindex=ep.host_ifindex, endpoint_id=ep.endpoint_id, identity=ep.identity,
                                     pod_mac=ep.pod_mac, host_mac=ep.host_mac)
                for ep in self.endpoints.values() if ep.state == "ready"}

    def sync_map(self) -> Delta[IPv4Address, EndpointEntry]:
        """Write only the difference between records and the pinned endpoint map."""
        with self.lock:
            desired = self.desired_map()
            delta = diff(desired, self.datapath.read_endpoints())
            if delta:
                self.datapath.write_endpoints(delta)
            self.written = desired
            return delta

    @staticmethod
    def _entry(ep: Endpoint) -> EndpointEntry:
        return EndpointEntry(ifindex=ep.host_ifindex, endpoint_id=ep.endpoint_id, identity=ep.identity,
                             pod_mac=ep.pod_mac, host_mac=ep.host_mac)

    def _write_entries(self, upserts: dict[IPv4Address, EndpointEntry], deletes: list[IPv4Address]) -> None:
        """Hot path: write these entries (only those that differ from what was written); the
        full comparison with the kernel stays in `sync_map()` (restore, periodic resync)."""
        with self.lock:
            delta: Delta[IPv4Address, EndpointEntry] = Delta(
                {ip: e for ip, e in upserts.items() if self.written.get(ip) != e},
                [ip for ip in deletes if ip in self.written])
            if delta:
                self.datapath.write_endpoints(delta)
                self.written.update(delta.upserts)
                for ip in delta.deletes:
                    del self.written[ip]

    def _next_endpoint_id(self) -> int:
        used = {ep.endpoint_id for ep in self.endpoints.values()} | set(self._pending.values())
        return next(i for i in range(1, 65536) if i not in used)

    # --- CNI operations --------------------------------------------------------------
    def get(self, container_id: str, ifname: str) -> Endpoint | None:
        return self.endpoints.get(endpoint_key(container_id, ifname))

    def add(self, container_id: str, ifname: str, netns: str, namespace: str = "", pod: str = "",
            identity: int = UNKNOWN_IDENTITY) -> Endpoint:
        key = endpoint_key(container_id, ifname)
        with self._key_lock(key):
            existing = self.endpoints.get(key)
            if existing is not None and existing.state == "ready":
                return existing
            if existing is not None:  # a broken leftover: start over
                self.delete(container_id, ifname)
            with self.lock:
                ip = self.ipam.allocate(key)
                self._ipam_dirty = True
                endpoint_id = self._next_endpoint_id()
                self._pending[key] = endpoint_id
            host_ifname = host_ifname_for(container_id, ifname)
            ep: Endpoint | None = None
            saved = False
            try:
                failpoints.hit("add.after-ipam")
                link = self._create_link(host_ifname, netns, ifname, ip)
                ep = Endpoint(container_id=container_id, ifname=ifname, netns=netns, host_ifname=host_ifname,
                              host_ifindex=link.host_ifindex, host_mac=link.host_mac, pod_mac=link.pod_mac, ip=ip,
                              endpoint_id=endpoint_id, namespace=namespace, pod=pod, identity=identity,
                              created=time.time())
                # Identity and policy entries first, then the map entry (written once, with its
                # identity), then the programs: the pod's first packet finds all of it.
                found = self.on_change(ep, True)
                failpoints.hit("add.after-policy")
                with self.lock:
                    if found is not None:
                        ep.identity = found
                    ep.identity = self._late_identity.pop(key, ep.identity)
                    self._pending.pop(key, None)
                    self.endpoints[key] = ep
                    self._write_entries({ip: self._entry(ep)}, [])
                failpoints.hit("add.after-map")
                self.netlink.attach(link.host_ifindex, *self.datapath.programs())
                failpoints.hit("add.after-attach")
                self._save(ep)  # the one durable write: from here on the address is this pod's
                saved = True
                # Complete: the owner goes on the link, so the record can be rebuilt from the
                # kernel if its file is lost. A link without it is an ADD that never finished.
                self.netlink.set_alias(link.host_ifindex, link_alias(container_id, ifname, namespace, pod, netns))
                failpoints.hit("add.after-save")
            except BaseException:
                # Undo every step taken, newest first: no half-wired veth, no address held.
                if saved:
                    self.db.delete_endpoint(key)
                with self.lock:
                    self.endpoints.pop(key, None)
                    self._pending.pop(key, None)
                    self._late_identity.pop(key, None)
                    self._write_entries({}, [ip])
                    self.ipam.release(key)
                self.netlink.delete_link(host_ifname)
                if ep is not None:
                    self.on_change(ep, False)
                raise
        log.info("endpoint added", extra={"fields": {"endpoint": key, "ip": str(ip), "pod": f"{namespace}/{pod}",
                                                    "host_ifname": host_ifname}})
        return ep

    def _create_link(self, host_ifname: str, netns: str, ifname: str, ip: IPv4Address) -> PodLink:
        """The pod's veth pair. A host link of this endpoint's name that no record claims was
        left by an ADD that died part-way (the name is a hash of container id and ifname, and
        ADDs of one endpoint are serialised): it is removed and creation tried once more."""
        try:
            return self.netlink.create_pod_link(host_ifname, netns, ifname, ip, self.config.mtu or 1500)
        except LinkExists as exc:
            if exc.side != "host":
                raise
        log.warning("orphan host link removed", extra={"fields": {"host_ifname": host_ifname}})
        self.netlink.delete_link(host_ifname)
        return self.netlink.create_pod_link(host_ifname, netns, ifname, ip, self.config.mtu or 1500)

    def delete(self, container_id: str, ifname: str) -> bool:
        """Idempotent: unknown containers and vanished links are fine."""
        key = endpoint_key(container_id, ifname)
        with self._key_lock(key):
            ep = self.endpoints.get(key)
            self.netlink.delete_link(ep.host_ifname if ep else host_ifname_for(container_id, ifname))
            with self.lock:
                self.endpoints.pop(key, None)
                if self.ipam.release(key) is not None:
                    self._ipam_dirty = True
                if ep is not None:
                    self._write_entries({}, [ep.ip])
            self.db.delete_endpoint(key)  # committed before kubelet hears "done"
        if ep is not None:
            log.info("endpoint deleted", extra={"fields": {"endpoint": key}})
            self.on_change(ep, False)
        return ep is not None

    def update_identity(self, key: str, identity: int) -> None:
        with self.lock:
            ep = self.endpoints.get(key)
            if ep is None:
                if key in self._pending:  # the ADD in flight picks it up when it publishes
                    self._late_identity[key] = identity
                return
            if ep.identity == identity:
                return
            ep.identity = identity
            if ep.state == "ready":
                self._write_entries({ep.ip: self._entry(ep)}, [])
            record = ep.model_dump(mode="json")
        self.db.put_endpoint(key, str(ep.ip), record)

    def list(self) -> list[Endpoint]:
        with self.lock:
            return sorted(self.endpoints.values(), key=lambda e: (e.namespace, e.pod, e.key))

    def summary(self) -> dict[str, Any]:
        with self.lock:
            states: dict[str, int] = {}
            for ep in self.endpoints.values():
                states[ep.state] = states.get(ep.state, 0) + 1
            return {"count": len(self.endpoints), "states": states, "ipam": {
                "cidr": str(self.ipam.cidr), "allocated": len(self.ipam.allocations)}}
