"""One pipeline: the local store (standalone) and the Kubernetes watch (operator) are two
sources of the same state builder, so the same objects give the same snapshot and deltas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from membrane.agent.local_source import LocalSource
from membrane.agent.object_store import ObjectStore
from membrane.api.state_objects import EndpointState, Kind
from membrane.identities import IdentityAllocator
from membrane.operator.identity_objects import identity_object, parse_identity
from membrane.operator.state_building import StateBuilder
from membrane.operator.state_log import StateLog

JSON = dict[str, Any]
NODE = "node-a"


def namespace(name: str, **labels: str) -> JSON:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(ns: str, name: str, ip: str, node: str = NODE, **labels: str) -> JSON:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"podIPs": [{"ip": ip}]}}


def node(name: str, ip: str, cidr: str) -> JSON:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": cidr}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def policy(ns: str, name: str, app: str) -> JSON:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}}


OBJECTS = [namespace("prod", team="a"), namespace("dev"), node("node-b", "10.9.0.2", "10.1.2.0/24"),
           pod("prod", "web", "10.1.1.5", app="web"), pod("prod", "client", "10.1.1.6", app="client"),
           pod("dev", "other", "10.1.2.7", node="node-b", app="web"), policy("prod", "allow-client", "web")]


class OperatorSide:
    """The cluster path: the watch feeds the builder, the leader allocates identities and
    writes MembraneIdentity objects that come back through the watch."""

    def __init__(self) -> None:
        self.builder = StateBuilder()
        self.log = StateLog(stream_id="cluster")
        self.allocator = IdentityAllocator()

    def feed(self, obj: JSON, deleted: bool = False) -> None:
        m = obj["metadata"]
        key = f"{m['namespace']}/{m['name']}" if m.get("namespace") else m["name"]
        setter = {"Namespace": "set_namespace", "Node": "set_node", "Pod": "set_pod",
                  "NetworkPolicy": "set_policy"}[obj["kind"]]
        getattr(self.builder, setter)(key, None if deleted else obj)

    def commit(self) -> None:
        for pod_key, labels in sorted(self.builder.pod_labels.items()):
            number = self.allocator.acquire(labels, pod_key)
            if str(number) not in {str(n) for n in self.builder.identities()}:
                self.builder.set_identity(str(number), identity_object(number, labels))
        self.log.apply(self.builder.take_changes(), 0.0)


def local_side(tmp_path: Path) -> tuple[ObjectStore, LocalSource]:
    store = ObjectStore(tmp_path)
    store.load()
    source = LocalSource(NODE, clock=lambda: 0.0)
    store.listeners.append(source.on_object)
    return store, source


def objects_of(log: StateLog) -> list[object]:
    return log.snapshot()[1]


def test_same_objects_from_either_source_give_the_same_snapshot(tmp_path: Path) -> None:
    cluster = OperatorSide()
    for obj in OBJECTS:
        cluster.feed(obj)
    cluster.commit()
    store, local = local_side(tmp_path)
    store.apply(OBJECTS)
    local.commit()
    assert objects_of(local.log) == objects_of(cluster.log)
    kinds = {o.kind for o in objects_of(local.log)}
    assert kinds == {Kind.NAMESPACE, Kind.NODE, Kind.IDENTITY, Kind.ENDPOINT, Kind.POLICY}


def test_same_changes_give_the_same_deltas(tmp_path: Path) -> None:
    cluster = OperatorSide()
    for obj in OBJECTS:
        cluster.feed(obj)
    cluster.commit()
    store, local = local_side(tmp_path)
    store.apply(OBJECTS)
    local.commit()
    relabelled = pod("prod", "web", "10.1.1.5", app="web", tier="front")
    for change in ([relabelled], [namespace("prod", team="b")]):
        for obj in change:
            cluster.feed(obj)
        cluster.commit()
        store.apply(change)
        local.commit()
        assert cluster.log.deltas_after(cluster.log.version - 1)[0].changes == \
            local.log.deltas_after(local.log.version - 1)[0].changes
    cluster.feed(OBJECTS[-1], deleted=True)
    cluster.commit()
    store.delete([OBJECTS[-1]])
    local.commit()
    assert cluster.log.deltas_after(cluster.log.version - 1)[0].changes == \
        local.log.deltas_after(local.log.version - 1)[0].changes
    assert objects_of(local.log) == objects_of(cluster.log)


def test_a_stored_pod_is_this_nodes_and_takes_its_local_endpoint_addresses(tmp_path: Path) -> None:
    store, local = local_side(tmp_path)
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "prod",
                                                            "labels": {"app": "web"}}}
    store.apply([namespace("prod"), bare])
    local.commit()
    assert not [o for o in objects_of(local.log) if o.kind is Kind.ENDPOINT]  # no address yet
    local.on_endpoint("prod", "web", ("10.1.1.9",))
    delta = local.commit()
    assert delta is not None
    endpoint = next(o for o in objects_of(local.log) if isinstance(o, EndpointState))
    assert endpoint.node_name == NODE and endpoint.ips == ("10.1.1.9",)
    local.on_endpoint("prod", "web", None)
    local.commit()
    assert not [o for o in objects_of(local.log) if o.kind is Kind.ENDPOINT]


def test_identities_are_released_and_their_objects_removed_after_gc(tmp_path: Path) -> None:
    store, local = local_side(tmp_path)
    store.apply([namespace("prod"), pod("prod", "web", "10.1.1.5", app="web")])
    local.commit()
    [number] = [int(o.key) for o in objects_of(local.log) if o.kind is Kind.IDENTITY]
    assert parse_identity(identity_object(number, local.allocator.labels_of(number))) is not None
    store.delete([pod("prod", "web", "10.1.1.5")])
    local.commit()
    assert [o for o in objects_of(local.log) if o.kind is Kind.IDENTITY]  # kept through the grace period
    assert local.allocator.gc(1.0) == [number]
    local.sync_identities()
    local.commit()
    assert not [o for o in objects_of(local.log) if o.kind is Kind.IDENTITY]


def test_a_streamed_endpoint_is_recorded_as_the_stored_pod_it_came_from() -> None:
    """No Pod is rebuilt from a stream record: both sources give the policy manager one record."""
    from membrane.agent.cluster_syncing import ClusterSyncer  # noqa: F401 - the consumer imports it
    from membrane.agent.pod_records import endpoint_record, pod_record
    from membrane.k8s_models import Pod, parse_object

    obj = pod("prod", "web", "10.1.1.5", app="web", tier="front")
    cluster = OperatorSide()
    cluster.feed(namespace("prod"))
    cluster.feed(obj)
    cluster.commit()
    endpoint = next(o for o in objects_of(cluster.log) if isinstance(o, EndpointState))
    stored = parse_object(obj)
    assert isinstance(stored, Pod)
    assert endpoint_record(endpoint) == pod_record(stored)
    assert endpoint_record(endpoint).named_ports and endpoint_record(endpoint).label_map == {"app": "web", "tier": "front"}


def test_the_local_stream_through_the_kubernetes_consumer_enforces_the_same_policy(tmp_path: Path) -> None:
    """The standalone store as a source, its stream consumed by the Kubernetes-mode consumer
    (ClusterSyncer): the same decisions as the operator's stream of the same cluster."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cluster_harness", Path(__file__).with_name(
        "test_cluster_syncing_policy.py"))  # the consumer's harness (fake maps, lookup_flat)
    assert spec is not None and spec.loader is not None
    k8s = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(k8s)

    from membrane.api.state_objects import Change, StateUpdate

    def stored_pod(name: str, ip: str, node_name: str, app: str) -> JSON:
        return pod("shop", name, ip, node=node_name, app=app) | {
            "spec": {"nodeName": node_name, "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 80, "protocol": "TCP"}]}]}}

    netpol = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "db-from-web", "namespace": "shop"},
              "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                    "ports": [{"port": 80}]}]}}
    (tmp_path / "store").mkdir()
    store, local = local_side(tmp_path / "store")
    local.node_name = k8s.NODE
    store.apply([namespace("shop", team="a"), node(k8s.NODE, "192.0.2.1", "10.0.1.0/24"),
                 node("n2", "192.0.2.2", "10.0.2.0/24"),
                 stored_pod("web", k8s.IPS[k8s.WEB], k8s.NODE, "web"), stored_pod("db", k8s.IPS[k8s.DB], k8s.NODE, "db"),
                 stored_pod("other", k8s.IPS[k8s.OTHER], "n2", "other"),
                 stored_pod("web2", k8s.IPS[k8s.WEB2], "n2", "web"), netpol])
    local.commit()
    agent = k8s.Agent(tmp_path / "agent")
    agent.local(k8s.WEB)
    agent.local(k8s.DB)
    version, objects = local.log.snapshot()
    agent.syncer.apply_update(StateUpdate(version, local.log.stream_id, True,
                                          [Change((o.kind, o.key), o) for o in objects]))
    assert agent.allowed(k8s.WEB, k8s.DB) and agent.allowed(k8s.WEB2, k8s.DB)
    assert not agent.allowed(k8s.OTHER, k8s.DB) and not agent.allowed(k8s.WEB, k8s.DB, 81)
    assert agent.allowed(k8s.DB, k8s.WEB) and agent.allowed(k8s.DB, k8s.OTHER)
    assert agent.identity(k8s.WEB2) == agent.identity(k8s.WEB) != agent.identity(k8s.OTHER)
    # a delta from the store: web2 relabelled away from web loses access
    store.apply([stored_pod("web2", k8s.IPS[k8s.WEB2], "n2", "other")])
    delta = local.commit()
    assert delta is not None
    agent.syncer.apply_update(StateUpdate(delta.version, local.log.stream_id, False, list(delta.changes),
                                          base_version=delta.version - 1))
    assert not agent.allowed(k8s.WEB2, k8s.DB) and agent.allowed(k8s.WEB, k8s.DB)


class FullDiffSource(LocalSource):
    """The oracle: allocation from a comparison of every pod's labels with those held (what
    `_allocate` did before it compared only the pods the builder touched)."""

    def _allocate(self) -> None:
        wanted = self.builder.pod_labels
        changed = sorted(p for p, _ in wanted.items() - self._held.items())
        gone = sorted(self._held.keys() - wanted.keys())
        now = self.clock()
        for p in changed:
            labels, old = wanted[p], self._held.get(p)
            self.allocator.acquire(labels, p)
            if old is not None:
                self.allocator.release(old, p, now)
            self._held[p] = labels
        for p in gone:
            self.allocator.release(self._held.pop(p), p, now)
        self.sync_identities()


def _random_step(rng: Any, sources: list[LocalSource]) -> None:
    """One store change or local endpoint event, the same to every source."""
    choice, ns, name = rng.randrange(6), rng.choice(["prod", "dev", "ops"]), f"p{rng.randrange(12)}"
    ip = f"10.1.{rng.randrange(3)}.{rng.randrange(1, 200)}"
    where, app, team = rng.choice([NODE, "node-b", ""]), rng.choice(["web", "db", "client"]), rng.choice(["a", "b"])
    for source in sources:
        if choice == 0:  # a pod applied (maybe relabelled, maybe another node's)
            source.on_object("Pod", ("Pod", ns, name), pod(ns, name, ip, node=where, app=app))
        elif choice == 1:  # a pod deleted
            source.on_object("Pod", ("Pod", ns, name), None)
        elif choice == 2:  # a namespace relabelled: every pod of it changes labels
            source.on_object("Namespace", ("Namespace", "", ns), namespace(ns, team=team))
        elif choice == 3:  # a namespace deleted
            source.on_object("Namespace", ("Namespace", "", ns), None)
        elif choice == 4:  # CNI ADD of a pod (stored or not)
            source.on_endpoint(ns, name, (ip,))
        else:  # CNI DEL
            source.on_endpoint(ns, name, None)


def test_allocating_only_touched_pods_numbers_like_comparing_every_pod() -> None:
    import random

    for seed in range(20):
        rng = random.Random(seed)
        fast, oracle = LocalSource(NODE, clock=lambda: 0.0), FullDiffSource(NODE, clock=lambda: 0.0)
        for step in range(120):
            for _ in range(rng.randrange(1, 4)):
                _random_step(rng, [fast, oracle])
            if rng.random() < 0.2:  # an identity released long ago is freed (housekeeping)
                for source in (fast, oracle):
                    source.allocator.gc(now=1e9)
                    source.sync_identities()
            got, want = fast.commit(), oracle.commit()
            assert (got.changes if got else None) == (want.changes if want else None), (seed, step)
            assert fast.allocator.items() == oracle.allocator.items(), (seed, step)
            assert fast._held == dict(fast.builder.pod_labels), (seed, step)
            assert not fast.builder.labels_touched  # forgotten once committed


def test_a_failed_allocation_is_retried_by_the_next_commit() -> None:
    source = LocalSource(NODE, clock=lambda: 0.0)
    source.on_object("Pod", ("Pod", "prod", "a"), pod("prod", "a", "10.1.1.5", app="web"))
    source.commit()
    real = source.allocator.acquire

    def refuse(labels: Any, owner: str) -> int:
        raise RuntimeError("allocator refused")
    source.allocator.acquire = refuse  # type: ignore[method-assign]  # one refusal, then the real one
    source.on_object("Pod", ("Pod", "prod", "b"), pod("prod", "b", "10.1.1.6", app="db"))
    try:
        source.commit()
    except RuntimeError:
        pass
    else:
        raise AssertionError("the refusal was not raised")
    assert "prod/b" not in source._held
    source.allocator.acquire = real  # type: ignore[method-assign]
    delta = source.commit()  # nothing new recorded: the refused pod is compared again
    assert delta is not None and source._held == dict(source.builder.pod_labels)
    assert any(c.key[0] is Kind.ENDPOINT and c.key[1] == "prod/b" for c in delta.changes)


def test_a_node_known_only_from_its_pods_hostip_is_recorded_once_not_per_pod() -> None:
    """Each of another node's pods names its hostIP; the node's record is given to the state
    logic when it changes (first pod, a lower address, the last pod gone), not again per pod."""
    source = LocalSource(NODE)
    calls: list[tuple[str, object]] = []
    set_node = source.builder.set_node
    source.builder.set_node = lambda name, obj: (calls.append((name, obj)), set_node(name, obj))[1]  # type: ignore[method-assign]

    def peer_pod(name: str, ip: str, host: str) -> JSON:
        found = pod("shop", name, ip, node="peer")
        found["status"]["hostIP"] = host
        return found

    for i in range(50):
        source.on_object("Pod", ("Pod", "shop", f"p{i}"), peer_pod(f"p{i}", f"10.9.0.{i + 1}", "192.0.2.9"))
    assert [(name, obj["status"]["addresses"][0]["address"]) for name, obj in calls] == [  # type: ignore[index]
        ("peer", "192.0.2.9")]
    source.on_object("Pod", ("Pod", "shop", "low"), peer_pod("low", "10.9.1.1", "192.0.2.3"))
    assert len(calls) == 2 and calls[-1][1]["status"]["addresses"][0]["address"] == "192.0.2.3"  # type: ignore[index]
    source.on_object("Pod", ("Pod", "shop", "low"), None)
    assert len(calls) == 3 and calls[-1][1]["status"]["addresses"][0]["address"] == "192.0.2.9"  # type: ignore[index]
    for i in range(50):
        source.on_object("Pod", ("Pod", "shop", f"p{i}"), None)
    assert calls[-1] == ("peer", None) and len(calls) == 4
    source.on_object("Node", ("Node", "", "peer"), node("peer", "192.0.2.50", "10.9.0.0/24"))  # stored: it wins
    source.on_object("Pod", ("Pod", "shop", "q"), peer_pod("q", "10.9.0.77", "192.0.2.9"))
    source.on_object("Node", ("Node", "", "peer"), None)  # gone: the pod's hostIP again
    assert calls[-1][0] == "peer" and calls[-1][1]["status"]["addresses"][0]["address"] == "192.0.2.9"  # type: ignore[index]
    assert source.builder.take_changes() is not None
