"""The node agent: wires config, datapath, endpoints, store and servers (agent/main.py starts it).

Start-up order matters for "no traffic lost on restart": the datapath is compiled and its
pinned maps reopened first (on a thread of its own, started by agent/starting_ahead.py before
this module is even imported; the start waits for it before any map is read), then persisted
endpoints are restored and the programs re-attached in place (tc replace), and only then is the
map brought to the desired content by writing differences. Nothing is flushed on the way.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from membrane.cni_types import CniError
from membrane.flows import observer_socket_for
from membrane.http_serving import HttpServer
from membrane.prefilter_rules import PrefilterRuleError, parse_cidr_file
from membrane.services import HealthCheck

from . import cni_conf_writing, overlay, policy_api, prefilter_api
from .api_serving import ApiServer, RequestError
from .cert_keeping import CertKeeper, TlsError
from .cluster_syncing import ClusterSyncer, saved_pod_cidr
from .cni_handling import CniHandler
from .config import AgentConfig
from .datapath.cgroup_attaching import CgroupAttachError
from .datapath.syscalls import prog_name
from .datapath.witness import Witness
from .endpoints import Endpoint, EndpointManager
from .enforcement_ledger import EnforcementLedger
from .flow_directory import PolicyDirectory
from .health_check_serving import HealthCheckServer
from .heap_freezing import (
    LARGE_BATCH,
    GcPauses,
    building_state,
    frozen_objects,
    refreeze_due,
    refreeze_heap,
    settle_start,
)
from .identity_book import IdentityBook
from .identity_sources import StreamIdentities, identity_count
from .lb_syncing import LB_KINDS, LbManager, LbQueries
from .masquerading import ensure_masquerade
from .metrics import AgentMetrics, DatapathCollector, ServiceCollector
from .netlinking import Netlink, in_netns, write_sysctl
from .observing import FlowMetricsCollector, FlowObserver
from .observing.grpc_serving import ObserverServer
from .policy_records import POLICY_KINDS, PolicyRecords
from .policy_syncing import LocalEndpoint, MapCapacityError, PolicyManager
from .prefilter_queries import PrefilterQueries
from .prefilter_syncing import PREFILTER_KINDS, PrefilterManager
from .service_flows import ServiceFlows, netns_cookie
from .sock_terminating import terminate_udp
from .start_refusal import StartRefused
from .starting_ahead import StartedAhead
from .state_consuming import Resyncing, StateConsumer, StateSource
from .state_driving import StateDriver
from .store_syncing import StoreSyncer
from .xdp_attaching import XdpAttacher, XdpAttachError

log = logging.getLogger("membrane.agent")

DEFAULT_WAIT_SECONDS = 30.0  # `apply --wait` without --timeout
NOT_ENFORCED = 504  # API error code: not enforced within the timeout (membranectl exits 3)


class Agent:
    def __init__(self, config: AgentConfig, ahead: StartedAhead) -> None:
        """`ahead`: the state database, pin root, witness and trusted store opened by the start's
        first steps, and the datapath compiling meanwhile (agent/starting_ahead.py)."""
        self.config = config
        self.ahead = ahead
        self.started = ahead.started
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.metrics = AgentMetrics()
        # Garbage collector pauses, timed from here on (agent/heap_freezing.py: why the heap is frozen).
        self.gc_pauses = GcPauses()
        self.gc_pauses.install()
        self.metrics.add_gc_pauses(self.gc_pauses)
        self.heap_refreezes = 0  # periodic refreezes done (housekeeping)
        self.datapath = ahead.datapath  # being compiled: usable once ahead.loading.wait() returned
        self.datapath.on_map_error = lambda name, op: self.metrics.map_errors.labels(name, op).inc()
        self.netlink = Netlink(config.procfs)
        self.state = ahead.state  # the one transactional store (agent/state_storing.py)
        # Which version of the desired state the datapath enforces (apply --wait, stream acks).
        self.ledger = EnforcementLedger(config.node_name)
        # The one driver: stream updates, store batches, local endpoints and resyncs run on its
        # thread, in order (a waiting request can give up at its timeout while its batch completes).
        self.driver = StateDriver()
        # The stream's consumer: records go to the managers registered for their kind.
        self.consumer = StateConsumer(config.node_name, self.ledger, on_refused=self._refused)
        # Identities as the stream numbers them (the operator's allocator, or the local one).
        self.identities = StreamIdentities()
        # The one place the mode matters: where the stream comes from.
        self.source = self._source()
        self.endpoints = EndpointManager(config, self.netlink, self.datapath, self._endpoint_changed,
                                         db=self.state.db)
        self.policy = PolicyManager(self.identities, self.datapath, self.endpoints.update_identity,
                                    self.netlink.host_addresses,  # read at every apply: never stale
                                    config.allow_host_traffic, node_name=config.node_name)
        self.apply_cause = "stream"  # the metric label of the next policy apply (driver thread only)
        self.policy_records = PolicyRecords(config.node_name, self.policy, self.identities, self._apply_policy)
        # Managers by kind. A new kind plugs in here, one line each: register(Kind.X, manager).
        for kind in POLICY_KINDS:
            self.consumer.register(kind, self.policy_records)
        # Services: Service and EndpointSlice records -> the lb4 maps.
        self.lb = LbManager(self.datapath, config.node_name, lambda: [str(a) for a in self.netlink.host_addresses()],
                            complete=self.consumer.synced.is_set, maglev_size=config.lb_maglev_table_size,
                            on_health=self._health_checks)
        for kind in LB_KINDS:
            self.consumer.register(kind, self.lb)
        self.lb_queries: LbQueries = self.lb
        self.lb.on_udp_backends_removed = self._terminate_udp
        self.health_server: HealthCheckServer | None = None
        # XDP prefilter: PacketFilter and CIDRDenyList records (and --prefilter-cidrs) -> its maps;
        # the program on --devices.
        self.prefilter = PrefilterManager(self.datapath)
        self.prefilter_queries: PrefilterQueries = self.prefilter  # readers: membranectl prefilter, metrics
        for kind in PREFILTER_KINDS:
            self.consumer.register(kind, self.prefilter)
        self.xdp = XdpAttacher(self.netlink, config.devices, config.xdp_mode, prog_name)
        self._prefilter_file_stamp: tuple[float, int] | None = None
        self.consumer.on_synced.append(self.ready.set)
        self.observer = FlowObserver(config.node_name, PolicyDirectory(self.policy, self.prefilter.owner_of),
                                     capacity=config.flow_ring_size)
        # Flows name the Service a socket hook translated them for (its translation event).
        self.service_flows = ServiceFlows(self.lb_queries, self._netns_clients)
        self.observer.enricher.services = self.service_flows.describe
        self.metrics.registry.register(FlowMetricsCollector(self.observer))
        self.observer_server: ObserverServer | None = None
        self.cni = CniHandler(self.endpoints, self.netlink, self.ready.is_set, self.source.before_add)
        self.metrics.watch_state(lambda: identity_count(self.identities),
                                 lambda: self.source.object_counts()["NetworkPolicy"], self.source.object_counts)
        self.api: ApiServer | None = None
        self.http: HttpServer | None = None
        self.certs: CertKeeper | None = None
        self.overlay: overlay.Overlay | None = None
        self.witness: Witness | None = None
        # A source whose restored state is incomplete (Kubernetes mode, damaged cluster cache):
        # the maps keep what they enforce until its snapshot arrives (that apply is a full resync).
        self.maps_held = False
        self.restore_seconds = 0.0  # the start's restore: stored state, endpoints, the maps' resync

    def _source(self) -> StateSource:
        """Kubernetes mode: the operator's stream (IPAM restores its pool with the PodCIDR the
        operator last gave). Standalone: the local store through the operator's state logic,
        identities numbered by the node's allocator."""
        cfg = self.config
        if cfg.mode == "kubernetes":
            cfg.pod_cidr = saved_pod_cidr(self.state.db, cfg.node_name) or cfg.pod_cidr
            cluster = ClusterSyncer(cfg.node_name, self.consumer, self.identities, cfg.state_dir,
                                    self._pod_cidr_learned, cfg.identity_wait_seconds, db=self.state.db)
            cluster.run = self.driver.call
            return cluster
        assert self.ahead.store is not None  # standalone: read and checked before the compile
        return StoreSyncer(cfg.node_name, self.consumer, self.ahead.store, IdentityBook(self.state.db), cfg.pod_cidr,
                           self._pod_cidr_learned, cfg.accept_state_loss, loaded=self.ahead.store_report)

    # --- lifecycle -----------------------------------------------------------------
    def _start_tls(self) -> None:
        """The node's certificate before anything dials the operator or serves TCP."""
        cfg = self.config
        if cfg.tls_dir is None and not cfg.tls_bootstrap:
            log.warning("running without TLS (--insecure-plaintext)")
            return
        requester = None
        if cfg.tls_bootstrap:
            from . import cert_requesting

            def requester(key_pem: bytes, csr_pem: bytes) -> tuple[bytes, bytes]:
                api = cert_requesting.api_client(cfg.api_server, str(cfg.kubeconfig) if cfg.kubeconfig else None,
                                                 cfg.api_token_file)
                try:
                    ca = cert_requesting.read_ca(api, cfg.tls_ca_configmap)
                    return ca, cert_requesting.request_certificate(api, cfg.node_name, csr_pem)
                finally:
                    api.close()
        self.certs = CertKeeper(cfg.node_name, cfg.tls_path, requester)
        try:
            material = self.certs.load()
        except (TlsError, RuntimeError, OSError) as exc:
            raise SystemExit(f"membrane-agent: no TLS certificate for node {cfg.node_name}: {exc}") from None
        self.certs.start()
        found = material.facts
        log.info("TLS certificate loaded", extra={"fields": {
            "node": found.name, "not_after": round(found.not_after), "dir": str(cfg.tls_path),
            "bootstrap": cfg.tls_bootstrap}})

    def start(self) -> None:
        """Everything after the first steps (agent/starting_ahead.py): what needs no map runs
        while the datapath compiles; the maps are read and written only after waiting for it."""
        cfg = self.config
        self._start_tls()
        write_sysctl("net.ipv4.ip_forward", "1", cfg.procfs)  # the node routes pod traffic to the outside
        self.witness = self.ahead.witness
        self.source.load(self.witness)  # standalone: read and checked before the compile started
        # Before any pod is wired: the pod MTU depends on the tunnel.
        self.overlay = planned = overlay.plan(cfg, self.netlink)
        cfg.mtu = planned.pod_mtu
        self.metrics.add_datapath(DatapathCollector(self.datapath.counters, self._endpoint_states,
                                                    self.datapath.map_usage))
        self.metrics.registry.register(ServiceCollector(self.lb_queries.summary, self.datapath.lb_stats))
        self.metrics.add_prefilter(self.prefilter_queries)
        started = time.perf_counter()
        self.source.prepare()  # the stored state into the source's state logic: no map involved
        prepared = time.perf_counter() - started
        self.ahead.loading.wait_maps()  # from here on the maps are there (a compile error ends the start here)
        self.metrics.compile.set(self.datapath.compile_seconds)
        started = time.perf_counter()
        restored = self.endpoints.restore()
        log.info("endpoints restored", extra={"fields": restored})
        # Policy state is rebuilt from the source's state and the restored endpoints, then
        # compared with the pinned maps: only differences are written, nothing is flushed.
        local = self.endpoints.list()
        for ep in local:
            self.policy.on_endpoint(ep.pod_ref, LocalEndpoint(ep.key, ep.endpoint_id, ep.ip))
        self.source.restore([(ep.pod_ref, (str(ep.ip),), ep.identity) for ep in local])
        if self.source.damaged is not None:
            self.maps_held = True
            log.warning("policy maps held as they are until the source's snapshot (its state was set aside)")
        else:
            log.info("policy restored", extra={"fields": self._resync(start=True)})
        self.restore_seconds = prepared + time.perf_counter() - started
        self.ahead.loading.wait()  # the programs, loaded meanwhile: attached from here on
        self.metrics.load.set(self.datapath.load_seconds)
        # Only now that the ipcache knows the nodes again (from_overlay trusts no one else); the
        # device is kept over restarts (created only if missing, program replaced in place), so
        # cross-node flows of restored pods never stop.
        self.overlay = ready = overlay.setup(cfg, planned, self.netlink, self.datapath)
        log.info("overlay ready", extra={"fields": ready.to_json()})
        for device in cfg.devices:  # per-packet Services from outside (NodePort, externalIP, LoadBalancer)
            ifindex = self.netlink.ifindex(device)
            if ifindex is None:
                raise StartRefused(f"--devices: no device {device!r} in this network namespace")
            self.netlink.attach_ingress(ifindex, self.datapath.program("from_netdev"))
            self.netlink.attach_egress(ifindex, self.datapath.program("to_netdev"))
            log.info("device programs attached", extra={"fields": {"device": device, "ifindex": ifindex}})
        self._start_prefilter()
        if cfg.cgroup_root is not None:  # Services at the socket: after the maps are back, replaced in place
            try:
                hooks = self.datapath.attach_sock_hooks(cfg.cgroup_root)
            except CgroupAttachError as exc:
                raise StartRefused(str(exc)) from None
            log.info("socket hooks attached", extra={"fields": {"cgroup": str(cfg.cgroup_root), **hooks}})
        self.source.restored_enforced()
        log.info("programs attached", extra={"fields": {"endpoints": self.endpoints.reattach()}})
        host, port = cfg.http_host_port
        self.http = HttpServer(host, port, self.metrics.registry, lambda: not self.stopping.is_set(),
                               self.ready.is_set)
        self.http.start()
        self.api = ApiServer(cfg.api_socket, self._handlers())
        self.api.start()
        self._start_observer()
        self.driver.start()  # from here on, every state change runs on the driver's thread
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        self.metrics.bootstrap.set(time.monotonic() - self.started)
        self.source.start(cfg.operator_address, self.certs.current if self.certs is not None else None)
        # The start-up state is built: no collection walks it again, collections on again
        # (held from main's first line; agent/heap_freezing.py).
        frozen = settle_start()
        if self.consumer.synced.is_set():  # ready once a complete state is applied: restored, or the first snapshot
            self.ready.set()
        log.info("agent ready", extra={"fields": {
            "pod_cidr": str(cfg.pod_cidr), "api_socket": str(cfg.api_socket), "http": f"{host}:{self.http.port}",
            # From main() on (imports before it excluded); compile and load ran on their own
            # thread, overlapped with the rest: compile_wait_seconds is what the start waited.
            "bootstrap_seconds": round(time.monotonic() - self.started, 3),
            "compile_seconds": round(self.datapath.compile_seconds, 3),
            "load_seconds": round(self.datapath.load_seconds, 3),
            "compile_wait_seconds": round(self.ahead.loading.waited_seconds, 3),
            "restore_seconds": round(self.restore_seconds, 3), "frozen_objects": frozen}})

    def _start_prefilter(self) -> None:
        """The node's deny file, the rules held (written now only when the state is complete: a
        restored cluster cache or standalone; else the operator's first snapshot writes them, and
        the pinned maps keep enforcing what they hold until then), then the program on --devices,
        replacing the previous agent's in place."""
        self._reload_prefilter_file(at_start=True)
        if self.consumer.synced.is_set():
            try:
                self.prefilter.apply()
            except MapCapacityError as exc:
                self._refused(exc)
        if not self.config.devices:
            return
        try:
            attached = self.xdp.attach(self.datapath.program("xdp_prefilter")[0])
            detached = self.xdp.detach_others()
        except XdpAttachError as exc:
            raise StartRefused(str(exc)) from None
        for found in attached:
            self.metrics.xdp_attached.labels(found.device, found.mode).set(1)
        if detached:
            log.info("XDP prefilter detached from devices no longer listed", extra={"fields": {"devices": detached}})

    def _reload_prefilter_file(self, at_start: bool = False) -> None:
        """--prefilter-cidrs: read at start (a bad file stops the start) and again when it changed
        (a bad edit is logged and the last good list stays)."""
        path = self.config.prefilter_cidrs
        if path is None:
            return
        try:
            stat = path.stat()
            stamp = (stat.st_mtime, stat.st_size)
            if stamp == self._prefilter_file_stamp:
                return
            prefixes = parse_cidr_file(path.read_text(), str(path))
        except (OSError, PrefilterRuleError) as exc:
            if at_start:
                raise StartRefused(f"--prefilter-cidrs: {exc}") from None
            log.error("prefilter deny file not reloaded: the last good list stays", extra={"fields": {
                "file": str(path), "reason": str(exc)}})
            return
        self._prefilter_file_stamp = stamp
        self.prefilter.set_file_list(str(path), prefixes)
        log.info("prefilter deny file read", extra={"fields": {"file": str(path), "prefixes": len(prefixes)}})

    def _health_checks(self, checks: dict[int, HealthCheck]) -> None:
        """The LB manager's healthCheckNodePorts (a server only once a service has one)."""
        if self.health_server is None:
            if not checks:
                return
            self.health_server = HealthCheckServer()
        self.health_server.update(checks)

    def _cni_conf_done(self) -> bool:
        dest = self.config.write_cni_conf_when_ready
        return dest is None or dest.exists()

    def stop(self) -> None:
        """Graceful: stop serving; programs stay attached and maps stay pinned."""
        self.stopping.set()
        self.ready.clear()
        if self.config.write_cni_conf_when_ready is not None and self.config.cni_uninstall == "always":
            cni_conf_writing.remove_conf(self.config.write_cni_conf_when_ready)
        if self.certs is not None:
            self.certs.stop()
        self.source.stop()  # nothing is flushed: the maps keep the last applied state
        if self.api:
            self.api.stop()
        if self.http:
            self.http.stop()
        if self.observer_server is not None:
            self.observer_server.stop()
        if self.health_server is not None:
            self.health_server.close()
        self.driver.stop()
        self.observer.stop()
        self.gc_pauses.remove()
        self.endpoints.flush_ipam()
        self.state.db.close()  # checkpointed: at rest the state is one file
        if self.witness is not None:
            self.witness.close()
        self.datapath.close()
        self.netlink.close()
        log.info("agent stopped")

    def _start_observer(self) -> None:
        """Flow events: ring buffer -> enriched Flows -> gRPC Observer (unix socket, optional TCP)."""
        dp = self.datapath.dp
        dp.set_event_config(dataclasses.replace(dp.event_config(), enabled=self.config.flow_events))
        dp.open_events(self.observer.on_event)
        self.observer.start_pump(dp.poll_events, read_kernel_lost=dp.events_lost)
        self.observer_server = ObserverServer(self.observer, observer_socket_for(self.config.api_socket),
                                              tcp=self.config.observer_tcp,
                                              tls=self.certs.current if self.certs is not None else None)
        self.observer_server.start()

    def _write_cni_conf(self) -> None:
        """Once ready: the node's CNI configuration appears (never before)."""
        cfg = self.config
        if cfg.write_cni_conf_when_ready is None or not self.ready.is_set() or self.stopping.is_set():
            return
        assert cfg.cni_conf_source is not None
        cni_conf_writing.write_conf(cfg.cni_conf_source, cfg.write_cni_conf_when_ready)

    def _housekeeping(self) -> None:
        next_gc = time.monotonic()
        # The start compared every map with the kernel just now (`_resync(start=True)`): the first
        # periodic resync is one period later. At once it only held up the first CNI ADDs and
        # applies behind a full read of every map.
        next_resync = next_gc + self.config.resync_seconds
        while not self.stopping.wait(0.2 if not self._cni_conf_done() else 1.0):
            now = time.monotonic()
            try:
                self._write_cni_conf()
                if now >= next_gc:
                    self.metrics.ct_gc_removed.inc(self.datapath.conntrack_gc())
                    next_gc = now + self.config.conntrack_gc_seconds
                if now >= next_resync:  # repairs drift: someone edited the maps behind our back
                    delta = self.endpoints.sync_map()
                    if delta:
                        log.warning("endpoint map drift repaired", extra={"fields": {
                            "upserts": len(delta.upserts), "deletes": len(delta.deletes)}})
                        self.metrics.map_repairs.labels("endpoints").inc(len(delta.upserts) + len(delta.deletes))
                    self.driver.call(self._resync)
                    # Garbage cycles among frozen objects freed, what lives frozen again: one full
                    # collection, after a held build or rarely, at a time of our choosing
                    # (agent/heap_freezing.py).
                    if refreeze_due():
                        self.driver.call(refreeze_heap)
                        self.heap_refreezes += 1
                    next_resync = now + self.config.resync_seconds
                self.endpoints.flush_ipam()  # the IPAM cursor; allocations live in the records
            except Exception:
                log.exception("housekeeping failed")

    def _resync(self, start: bool = False) -> dict[str, int]:
        """On the driver: every manager with a resync compares its maps with the kernel and
        repairs drift (counted per map in membrane_map_resync_repairs_total; not at start,
        when the maps are read for the first time). Then unused identities age out."""
        total: dict[str, int] = {}
        if not start:
            self._reload_prefilter_file()
        if not self.maps_held:
            for manager in self.consumer.managers():
                if not isinstance(manager, Resyncing):
                    continue
                report = dict(manager.resync())
                for key, count in report.items():
                    total[key] = total.get(key, 0) + count
                    if key.startswith("repaired_") and not start:
                        self.metrics.map_repairs.labels(key[len("repaired_"):]).inc(count)
                if any(report.values()) and not start:
                    log.warning("maps resynced", extra={"fields": {"manager": type(manager).__name__, **report}})
        if not start:
            self.source.gc()
        return total

    # --- glue ----------------------------------------------------------------------
    def _terminate_udp(self, gone: list[tuple[IPv4Address, int]]) -> None:
        """Connected UDP sockets translated to backends that left their Service: closed, in every
        local pod and on the node itself (their applications connect anew, to a live backend)."""
        translated = self.datapath.sock_translated
        closed = terminate_udp(gone, translated)
        for ep in self.endpoints.list():
            try:
                closed += in_netns(ep.netns, lambda: terminate_udp(gone, translated))
            except OSError:
                continue  # the pod is going away
        if closed:
            log.info("UDP sockets of removed backends closed", extra={"fields": {"sockets": closed,
                                                                                 "backends": len(gone)}})

    def _netns_clients(self) -> dict[int, str]:
        """netns cookie -> address of each local endpoint (read in its namespace; flows only)."""
        found = {}
        for ep in self.endpoints.list():
            try:
                found[in_netns(ep.netns, netns_cookie)] = str(ep.ip)
            except OSError:
                continue  # gone meanwhile
        return found

    def _endpoint_states(self) -> dict[str, int]:
        return dict(self.endpoints.summary()["states"])

    def _endpoint_changed(self, ep: Endpoint, present: bool) -> int | None:
        """Endpoint manager hook: an ADD calls it before it writes the pod's map entry and uses
        the identity returned; the policy entries are in the maps when this returns."""
        local = LocalEndpoint(ep.key, ep.endpoint_id, ep.ip) if present else None

        def record() -> int | None:
            self.policy.on_endpoint(ep.pod_ref, local)
            if not present:
                self.policy_records.endpoint_removed(ep.pod_ref)
            self.source.endpoint_changed(ep.pod_ref, (str(ep.ip),) if present else None)
            return self.identities.identity_of(ep.pod_ref) if present else None

        # Concurrent ADDs/DELs record on the driver one after the other and share one apply.
        return self.driver.call_here(record, then=self._apply_endpoints)

    def _apply_endpoints(self) -> None:
        """Every manager writes what the endpoints changed. A change a map cannot hold: the pod
        is wired, its policy entries are not written (no entry = drop): it stays cut off until
        the maps have room. Loud, counted (the consumer's refusal), never half-applied."""
        self.apply_cause = "endpoint"
        try:
            self.consumer.apply_recorded()
        finally:
            self.apply_cause = "stream"

    def _refused(self, exc: MapCapacityError) -> None:
        self.metrics.changes_refused.labels(exc.role).inc()
        log.error("policy change refused: a map would overflow", extra={"fields": {
            "map": exc.role, "needed": exc.needed, "capacity": exc.capacity, "reason": str(exc)}})

    def _apply_policy(self) -> dict[str, int]:
        """On the driver (the policy manager's apply, as the consumer calls it): write the
        recorded changes. Raises MapCapacityError (nothing written) when a map would overflow."""
        started = time.perf_counter()
        if self.maps_held:
            if not self.consumer.counts["snapshots"]:
                return {}  # recorded; written with the source's snapshot
            report = self.policy.resync()
            self.maps_held = False
            log.info("policy maps rebuilt from the source's snapshot", extra={"fields": report})
        else:
            report = self.policy.apply()
        self.metrics.policy_delay.labels(self.apply_cause).observe(time.perf_counter() - started)
        if any(report.values()):
            log.info("policy applied", extra={"fields": {"cause": self.apply_cause, **report}})
        return report

    def _pod_cidr_learned(self, cidr: IPv4Network) -> None:
        """This node's PodCIDR: the operator's (Kubernetes mode, also as restored), the one
        configured (standalone), or a Node object's for this node."""
        self.endpoints.set_pod_cidr(cidr)
        if self.config.masquerade:
            ensure_masquerade(cidr, self.config.cluster_cidr or cidr)
        log.info("pod CIDR set", extra={"fields": {"pod_cidr": str(cidr)}})

    def _store_op(self, req: dict[str, Any], verb: str) -> Any:
        """apply/delete: the batch is stored, applied to the maps and enforced on the driver
        thread. With `wait`, the answer says which version is enforced on which node, or the
        request fails with NOT_ENFORCED (naming the node) once `timeout` seconds passed."""
        docs = self._documents(req)
        wait = bool(req.get("wait"))
        timeout = _timeout(req.get("timeout_seconds"))
        started = time.perf_counter()
        future = self.driver.submit(lambda: self._store_change(docs, verb))
        try:
            outcome, version = future.result(timeout if wait else None)
        except FutureTimeout:
            raise RequestError(f"not enforced within {timeout:g}s on node(s): {self.config.node_name}",
                               code=NOT_ENFORCED, details={"pending": [self.config.node_name],
                                                           "enforced": []}) from None
        log.info("objects %s", verb, extra={"fields": {"count": len(outcome), "version": version,
                                                         "seconds": round(time.perf_counter() - started, 4)}})
        if not wait:
            return outcome
        return {"objects": outcome, "version": version, "enforced": [self.config.node_name], "pending": [],
                "seconds": round(time.perf_counter() - started, 6)}

    def _store_change(self, docs: list[Any], verb: str) -> tuple[list[dict[str, str]], int]:
        """On the driver thread: the source stores the objects and the consumer writes the maps;
        a change a map cannot hold is rolled back by the source and refused."""
        self.apply_cause = "store"
        # A large batch's state is the new long-lived heap: built with no collection walking
        # it, frozen after it (agent/heap_freezing.py).
        try:
            with building_state(len(docs) >= LARGE_BATCH):
                outcome, version = self.source.change_objects(docs, verb)
        finally:
            self.apply_cause = "stream"
            self.metrics.refresh_store()
        self.metrics.enforced_version.set(version)
        return outcome, version

    def _cni(self, req: dict[str, Any]) -> Any:
        started = time.perf_counter()
        outcome = "success"
        try:
            return self.cni.handle(req)
        except CniError as exc:
            outcome = "error"
            log.warning("cni request failed", extra={"fields": {"command": req.get("command"), "code": exc.code,
                                                                "msg": exc.msg, "details": exc.details}})
            raise
        finally:
            self.metrics.cni_duration.labels(str(req.get("command")), outcome).observe(time.perf_counter() - started)

    def _handlers(self) -> dict[str, Any]:
        return {
            "cni": self._cni,
            "status": lambda req: self.status(),
            "endpoint.list": lambda req: [self._endpoint_row(ep) for ep in self.endpoints.list()],
            "apply": lambda req: self._store_op(req, "apply"),
            "delete": lambda req: self._store_op(req, "delete"),
            "policy.list": lambda req: policy_api.policy_list(self.policy, self.consumer),
            "policy.get": lambda req: policy_api.policy_get(self.policy, self.consumer, str(req.get("name"))),
            "policy.trace": lambda req: policy_api.policy_trace(self.policy, str(req.get("src")), str(req.get("dst")),
                                                                str(req.get("port", "80/TCP"))),
            "identity.list": lambda req: policy_api.identity_list(self.policy),
            "identity.get": lambda req: policy_api.identity_get(self.policy, int(req.get("identity", -1))),
            "get": lambda req: self.source.stored_objects(str(req.get("kind"))),
            "bpf.endpoints": lambda req: self.datapath.dump_endpoints(),
            "bpf.ct": lambda req: self.datapath.dump_conntrack(),
            "bpf.lb": lambda req: self.datapath.dump_lb(),
            "service.list": lambda req: self.lb_queries.service_rows(),
            "prefilter.list": lambda req: prefilter_api.prefilter_list(self.prefilter_queries),
            "prefilter.stats": lambda req: prefilter_api.prefilter_stats(self.prefilter_queries),
            "bpf.metrics": lambda req: [{"reason": r, "direction": d, "packets": p, "bytes": b}
                                        for r, d, p, b in self.datapath.counters()],
        }

    @staticmethod
    def _documents(req: dict[str, Any]) -> list[Any]:
        docs = req.get("objects")
        if not isinstance(docs, list):
            raise RequestError("objects must be a list of Kubernetes objects")
        return docs

    def _endpoint_row(self, ep: Endpoint) -> dict[str, Any]:
        pod = f"{ep.namespace}/{ep.pod}" if ep.pod else "-"
        return {"pod": pod, "container_id": ep.container_id, "ip": str(ep.ip), "ifname": ep.ifname,
                "host_ifname": ep.host_ifname, "endpoint_id": ep.endpoint_id, "identity": ep.identity,
                "state": ep.state}

    def status(self) -> dict[str, Any]:
        return {"node": self.config.node_name, "mode": self.config.mode, "ready": self.ready.is_set(),
                "uptime_seconds": round(time.monotonic() - self.started, 1),
                "pod_cidr": str(self.config.pod_cidr), "endpoints": self.endpoints.summary(),
                "datapath": {"compile_seconds": round(self.datapath.compile_seconds, 3),
                             "load_seconds": round(self.datapath.load_seconds, 3),
                             "pin_root": str(self.datapath.dp.pin_root)},
                "store": self.source.object_counts(),
                "enforcement": self.ledger.status(),
                **({"overlay": self.overlay.to_json()} if self.overlay is not None else {}),
                "prefilter": {**self.prefilter.status(), "devices": self.xdp.status()},
                "gc": {"enabled": gc.isenabled(), "frozen_objects": frozen_objects(),
                       "refreezes": self.heap_refreezes,
                       "collections": list(self.gc_pauses.counts),
                       "longest_full_collection_seconds": round(self.gc_pauses.longest[2], 4)},
                **self.source.report()}


def _timeout(value: Any) -> float:
    if value is None:
        return DEFAULT_WAIT_SECONDS
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"timeout must be a number of seconds, got {value!r}") from None
    if not 0 < seconds <= 3600:
        raise RequestError(f"timeout must be in (0, 3600] seconds, got {seconds:g}")
    return seconds
