"""`Operator`: wires the watchers, the controller loop, leader election and the servers.

One controller thread does all the thinking, in passes: drain the cache's change queue, feed
the changed objects to the `StateBuilder` (a change costs what it touches, not the cluster),
then (leader only) assign PodCIDRs, allocate and collect identities, report invalid policies,
then (every replica) commit the touched state keys to the state log, which encodes the delta
once and wakes the gRPC streams. A pass also runs every `resync_seconds` without changes, for
GC timers and failed writes. Every `full_rebuild_seconds` the state is rebuilt from scratch
and diffed against the log: a non-empty diff means the incremental path missed something (it
is logged, and the rebuild repairs it). Nothing is written and no state is served before every
watched resource has been listed once: a partial view would look like deletions.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from membrane.api.backoff import Backoff
from membrane.api.state_objects import Kind, StateKey, StateObject
from membrane.http_serving import HttpServer
from membrane.operator import resources as res
from membrane.operator.cache import CacheEvent, ObjectCache
from membrane.operator.cert_authority import ServingCertificate, load_or_create_ca
from membrane.operator.cidr_pool import CidrPool
from membrane.operator.config import OperatorConfig, host_port
from membrane.operator.crds import CRDS
from membrane.operator.csr_signing import CsrSigner
from membrane.operator.electing import ElectionConfig, LeaderElector
from membrane.operator.enforcement_reporting import EnforcementReporter
from membrane.operator.identity_syncing import IdentitySyncer
from membrane.operator.kube_client import KubeClient, KubeError, connect
from membrane.operator.leader_labelling import LeaderLabeller
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.pod_cidr_syncing import PodCidrSyncer
from membrane.operator.policy_checking import PolicyChecker
from membrane.operator.prefilter_status_reporting import PrefilterStatusReporter, PrefilterVerdicts
from membrane.operator.propagation import PropagationTracker
from membrane.operator.state_building import StateBuilder
from membrane.operator.state_log import StateLog
from membrane.operator.state_serving import StateServicer, serve
from membrane.operator.state_serving import stop as stop_serving
from membrane.operator.watching import ResourceWatcher

log = logging.getLogger(__name__)

LIVENESS_WINDOW = 60.0  # a controller pass must finish at least this often to be healthy
FULL_REBUILD_SECONDS = 300.0  # rebuild the state from scratch this often (drift check)
# What the state stream is made of; other resources' changes do not touch it.
_BUILDER_INPUTS = (res.NAMESPACES, res.NODES, res.IDENTITIES, res.PODS, res.NETWORK_POLICIES, res.SERVICES,
                   res.ENDPOINT_SLICES, res.PACKET_FILTERS, res.CIDR_DENY_LISTS)


class Operator:
    def __init__(self, config: OperatorConfig, kube: KubeClient | None = None,
                 backoff: type[Backoff] | None = None) -> None:
        self.config = config
        # The one client every controller, watch and the election share (its connection pool).
        self.kube = kube or connect(config.api_server, config.kubeconfig)
        self.metrics = OperatorMetrics()
        self.cache = ObjectCache()
        self.cidrs = PodCidrSyncer(self.kube, CidrPool(config.cluster_cidr,
                                                       config.node_cidr_prefix), self.metrics)
        self.identities = IdentitySyncer(self.kube, self.metrics, config.identity_gc_seconds)
        self.policies = PolicyChecker(self.kube, self.metrics, config.identity)
        self.state = StateLog(config.state_log_size)
        self.tracker = PropagationTracker(self.metrics.propagation.observe)
        self.tls = not config.insecure_plaintext
        self.servicer = StateServicer(self.state, self.tracker, self.metrics,
                                      ready=lambda: self.state_built, tls=self.tls,
                                      node_known=self._node_known,
                                      leading=lambda: self.is_leader)
        self.serving_cert: ServingCertificate | None = None
        self.csr_signer: CsrSigner | None = None
        # Per policy: how many nodes enforce its current spec (annotations, leader only).
        self.enforcement = EnforcementReporter(self.kube, self.cache, self.tracker, self.metrics,
                                               lambda: self.is_leader)
        # PacketFilter/CIDRDenyList: accepted or not, and how many nodes enforce which generation.
        self.prefilter_verdicts = PrefilterVerdicts()
        self.enforcement.targets.append(PrefilterStatusReporter(self.kube, self.cache, self.metrics,
                                                                self.prefilter_verdicts))
        self.elector: LeaderElector | None = None
        self.labeller = LeaderLabeller(self.kube, config.pod_namespace, config.identity,
                                       self.metrics) if config.leader_label else None
        if config.leader_election:
            self.elector = LeaderElector(self.kube, ElectionConfig(
                config.lease_name, config.lease_namespace, config.identity,
                config.lease_duration_seconds, config.renew_deadline_seconds,
                config.retry_period_seconds), self.metrics,
                on_started=self._leadership_changed, on_stopped=self._leadership_changed)
        self.watched = res.WATCHED + ((res.CSRS,) if self.tls else ())
        self.watchers = [ResourceWatcher(self.kube, r, self.cache, self.metrics,
                                         backoff or Backoff,
                                         read_timeout=config.watch_read_timeout_seconds)
                         for r in self.watched]
        self.state_built = False
        self.full_rebuild_seconds = FULL_REBUILD_SECONDS
        self.rebuild_diffs = 0  # full rebuilds that found the incremental state wrong
        self._builder: StateBuilder | None = None
        self._last_full = 0.0
        self._dirty: set[tuple[res.Resource, str]] = set()
        self._nodes_changed = True
        self._last_cidr_sync = 0.0
        self.grpc_port = 0
        self.http_port = 0
        self._was_leader = False
        self._relabel_all = True
        self._last_pass = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._grpc: Any = None
        self._http: HttpServer | None = None

    # --- status -------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self.elector.is_leader if self.elector is not None else True

    def live(self) -> bool:
        return self._thread is not None and self._thread.is_alive() \
            and time.monotonic() - self._last_pass < LIVENESS_WINDOW

    def ready(self) -> bool:
        return self.live() and self.state_built

    # --- lifecycle ----------------------------------------------------------------------------
    def _node_known(self, name: str) -> bool:
        return self.cache.get(res.NODES, name) is not None

    def start(self) -> Operator:
        if self.config.install_crds:
            self._install_crds()
        credentials = None
        if self.tls:
            from membrane.tls.grpc_credentials import server_credentials

            authority = load_or_create_ca(self.kube, self.config.tls_ca_secret)
            lifetime = self.config.tls_cert_lifetime_seconds
            self.serving_cert = ServingCertificate(authority, lifetime)
            self.csr_signer = CsrSigner(self.kube, authority, lifetime,
                                        self.config.tls_agent_service_account, self.metrics)
            credentials = server_credentials(self.serving_cert.current)
        for watcher in self.watchers:
            watcher.start()
        self._thread = threading.Thread(target=self._run, name="operator-controller",
                                        daemon=True)
        self._thread.start()
        if self.elector is not None:
            self.elector.start()
        self.enforcement.start()
        self._grpc, self.grpc_port = serve(self.servicer, self.config.grpc_addr,
                                           credentials=credentials)
        host, port = host_port(self.config.http_addr)
        self._http = HttpServer(host, port, self.metrics.registry, self.live, self.ready, name="operator-http")
        self.http_port = self._http.port
        self._http.start()
        log.info("operator %s started (grpc %s, http %s)", self.config.identity,
                 self.grpc_port, self.http_port)
        return self

    def stop(self, release: bool = True) -> None:
        """Stop everything; `release=False` leaves the lease held, as a crash would."""
        if self._grpc is not None:
            stop_serving(self._grpc, self.servicer)
        self.enforcement.stop()
        if self.elector is not None:
            self.elector.stop(release=release)
        self._stop.set()
        self.kick()
        if self._thread is not None:
            self._thread.join(10)
        for watcher in self.watchers:
            watcher.stop()
        if self._http is not None:
            self._http.stop()
        self.kube.close()

    def __enter__(self) -> Operator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kick(self) -> None:
        """Run a controller pass soon (leadership changed, a test wants one)."""
        self.cache.events.put(None)  # type: ignore[arg-type]  # None wakes the controller without an event

    def _leadership_changed(self) -> None:
        self.servicer.leadership_changed()  # a replica that stepped down ends its streams
        self.kick()

    def _install_crds(self) -> None:
        for crd in CRDS:
            try:
                self.kube.create(res.CUSTOM_RESOURCE_DEFINITIONS, crd)
                log.info("installed CRD %s", crd["metadata"]["name"])
            except KubeError as exc:
                if not exc.conflict:
                    raise

    # --- the controller -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            seen_at, dirty = self._drain()
            self._dirty |= dirty
            if any(resource == res.NODES for resource, _key in dirty):
                self._nodes_changed = True
            if self._stop.is_set():
                break
            started = time.monotonic()
            try:
                self._pass(seen_at)
            except Exception:
                log.exception("controller pass failed")
            self._last_pass = time.monotonic()
            self.metrics.controller_passes.observe(self._last_pass - started)

    def _drain(self) -> tuple[float | None, set[tuple[res.Resource, str]]]:
        """Wait for changes (or the resync period); returns when the oldest was seen and which
        objects changed."""
        try:
            first: CacheEvent | None = self.cache.events.get(timeout=self.config.resync_seconds)
        except queue.Empty:
            return None, set()
        events = [first]
        while True:
            try:
                events.append(self.cache.events.get_nowait())
            except queue.Empty:
                break
        real = [e for e in events if e is not None]
        seen = min((e.seen_at for e in real), default=None)
        return seen, {(e.resource, e.key) for e in real}

    def _update_builder(self, policies: list[dict[str, Any]]) -> dict[StateKey, StateObject | None] | None:
        """Feed the changed objects to the builder; None: a full rebuild is due instead."""
        builder = self._builder
        if builder is None or time.monotonic() - self._last_full >= self.full_rebuild_seconds:
            return None
        dirty, self._dirty = self._dirty, set()
        setters = {res.NAMESPACES: builder.set_namespace, res.NODES: builder.set_node,
                   res.IDENTITIES: builder.set_identity, res.PODS: builder.set_pod,
                   res.NETWORK_POLICIES: builder.set_policy, res.SERVICES: builder.set_service,
                   res.ENDPOINT_SLICES: builder.set_endpoint_slice, res.PACKET_FILTERS: builder.set_packet_filter,
                   res.CIDR_DENY_LISTS: builder.set_cidr_deny_list}
        for resource in _BUILDER_INPUTS:  # namespaces and identities before the pods they label
            for changed, key in dirty:
                if changed == resource:
                    setters[resource](key, self.cache.get(resource, key))
        return builder.take_changes()

    def _rebuild(self, policies: list[dict[str, Any]]) -> StateBuilder:
        builder = StateBuilder(lambda p: self.policies.verdict(p).valid, self.prefilter_verdicts)
        builder.load(self.cache.list(res.NAMESPACES), self.cache.list(res.NODES),
                     self.cache.list(res.PODS), policies, self.cache.list(res.IDENTITIES),
                     services=self.cache.list(res.SERVICES),
                     endpoint_slices=self.cache.list(res.ENDPOINT_SLICES),
                     packet_filters=self.cache.list(res.PACKET_FILTERS),
                     cidr_deny_lists=self.cache.list(res.CIDR_DENY_LISTS))
        builder.take_changes()
        self._dirty.clear()
        self._last_full = time.monotonic()
        return builder

    def _pass(self, seen_at: float | None) -> None:
        if not self.cache.synced(*self.watched):
            return
        policies = self.cache.list(res.NETWORK_POLICIES)
        self.policies.valid_policies(policies)  # the metric; forgets verdicts of old versions
        for resource in (res.PACKET_FILTERS, res.CIDR_DENY_LISTS):  # verdicts are cached per generation
            self.metrics.invalid_prefilter_objects.labels(resource.kind).set(
                sum(1 for obj in self.cache.list(resource) if self.prefilter_verdicts(obj)))
        changed_identities = {key for resource, key in self._dirty if resource == res.IDENTITIES}
        changes = self._update_builder(policies)
        full = changes is None
        if full:
            self._builder = self._rebuild(policies)
        builder = self._builder
        assert builder is not None
        leader = self.is_leader
        if leader != self._was_leader:
            # A new term starts from what the API says, not from our last term's memory.
            self.identities.reset()
            self._was_leader = leader
            self._relabel_all = True
            self._nodes_changed = True
        if self.labeller is not None:
            self.labeller.sync(leader)  # the Service routes agents to the leader's pod
        if leader:
            if self._nodes_changed or full or time.monotonic() - self._last_cidr_sync > 30.0:
                # Only Node changes (or a retry of failed writes) can change the plan.
                self._nodes_changed = False
                self._last_cidr_sync = time.monotonic()
                nodes = self.cache.list(res.NODES)
                if len(self.cidrs.sync(nodes)) < len(nodes):
                    self._nodes_changed = True  # a write failed: try again next pass
            self.identities.sync_wanted(builder.pod_labels, builder.identities())
            # Labels mirrored onto identity objects: every object after a rebuild or a new term,
            # else only those that changed.
            relabel = self.cache.list(res.IDENTITIES) if full or self._relabel_all else \
                [o for o in (self.cache.get(res.IDENTITIES, k) for k in changed_identities) if o is not None]
            self._relabel_all = False
            self.identities.relabel(relabel)
            if self.csr_signer is not None:
                self.csr_signer.sync(self.cache.list(res.CSRS), self._node_known)
            self.policies.report(policies)
        when = seen_at if seen_at is not None else time.monotonic()
        if full:
            delta = self.state.commit(builder.state, when)
            if delta is not None and self.state_built:
                self.rebuild_diffs += 1
                log.warning("full rebuild changed %d state objects the incremental path had "
                            "missed: %s", len(delta.changes),
                            [f"{c.key[0]}:{c.key[1]}" for c in delta.changes[:10]])
        else:
            assert changes is not None
            delta = self.state.apply(changes, when)
        if delta is not None:
            self.tracker.committed(delta.version, delta.seen_at)
            self.enforcement.committed(delta.version, delta.changes)
            self.metrics.state_version.set(delta.version)
            self.metrics.commit_changes.observe(len(delta.changes))
            for kind in Kind:
                self.metrics.state_objects.labels(kind.value).set(builder.counts[kind])
        self.state_built = True
        self.enforcement.wake()  # nodes may have come or gone (the count); cheap when nothing differs
