"""Standalone mode's source: the local store -> LocalSource -> the one consumer -> the policy
manager. The same objects through either source (the operator's stream, the local store)
give the same maps; the standalone facts a cluster has elsewhere (a pod's addresses from its
endpoint, a pod no object describes, a namespace never stored, a pod deleted while it runs,
versions and rollback) hold."""

from __future__ import annotations

import importlib.util
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from membrane.agent.api_serving import RequestError
from membrane.agent.cluster_syncing import ClusterSyncer
from membrane.agent.identity_book import IdentityBook
from membrane.agent.identity_sources import StreamIdentities
from membrane.agent.object_store import ObjectStore
from membrane.agent.policy_records import POLICY_KINDS, PolicyRecords
from membrane.agent.policy_syncing import LocalEndpoint, PolicyManager
from membrane.agent.state_consuming import StateConsumer
from membrane.agent.state_storing import open_state
from membrane.agent.store_syncing import StoreSyncer
from membrane.api.state_objects import Change, StateUpdate
from membrane.identities import CLUSTER_IDENTITY_MIN
from membrane.k8s_models import ObjectRef
from membrane.policy import Direction, Protocol, lookup_flat
from membrane_testkit.fake_maps import FakePolicyMaps

JSON = dict[str, Any]
NODE = "n1"
HOST = "198.18.0.1"


def _local_source_tests() -> ModuleType:
    spec = importlib.util.spec_from_file_location("local_source_tests", Path(__file__).with_name("test_local_source.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LS = _local_source_tests()  # the operator side (watch -> builder -> log) and the object makers


class Side:
    """One agent's policy side: the consumer, the policy manager on fake maps, a source."""

    def __init__(self) -> None:
        self.maps = FakePolicyMaps()
        self.endpoint_identity: dict[str, int] = {}
        self.identities = StreamIdentities()
        self.policy = PolicyManager(self.identities, self.maps, self.endpoint_identity.__setitem__, lambda: [HOST],
                                    node_name=NODE)
        self.consumer = StateConsumer(NODE)
        self.records = PolicyRecords(NODE, self.policy, self.identities)
        for kind in POLICY_KINDS:
            self.consumer.register(kind, self.records)
        self.endpoints: dict[ObjectRef, LocalEndpoint] = {}

    def identity(self, ip: str) -> int:
        value = self.maps.ipcache[IPv4Network(f"{ip}/32")]
        return value if isinstance(value, int) else value.identity

    def allowed(self, src_ip: str, dst: ObjectRef, port: int = 8080) -> bool:
        local = self.endpoints[dst]
        found = lookup_flat(self.maps.policy, local.endpoint_id, Direction.INGRESS, self.identity(src_ip),
                            Protocol.TCP, port)
        return bool(found and found.verdict == 1)


class Standalone(Side):
    def __init__(self, tmp: Path) -> None:
        super().__init__()
        db = open_state(tmp).db
        self.store = ObjectStore(db)
        self.store.load()
        self.book = IdentityBook(db)
        self.cidrs: list[IPv4Network] = []
        self.syncer = StoreSyncer(NODE, self.consumer, self.store, self.book, IPv4Network("10.1.1.0/24"),
                                  self.cidrs.append)
        self.syncer.restore()

    def apply(self, *objs: JSON) -> int:
        return self.syncer.change_objects(list(objs), "apply")[1]

    def delete(self, *objs: JSON) -> int:
        return self.syncer.change_objects(list(objs), "delete")[1]

    def wire(self, ns: str, name: str, ip: str, eid: int) -> int | None:
        """What the agent does for a CNI ADD (on its driver): record, then one apply."""
        ref = ObjectRef(ns, name)
        self.endpoints[ref] = LocalEndpoint(f"c{eid}/eth0", eid, IPv4Address(ip))
        self.policy.on_endpoint(ref, self.endpoints[ref])
        self.syncer.endpoint_changed(ref, (ip,))
        identity = self.identities.identity_of(ref)
        self.consumer.apply_recorded()
        return identity

    def unwire(self, ns: str, name: str) -> None:
        ref = ObjectRef(ns, name)
        del self.endpoints[ref]
        self.policy.on_endpoint(ref, None)
        self.records.endpoint_removed(ref)
        self.syncer.endpoint_changed(ref, None)
        self.consumer.apply_recorded()


class Cluster(Side):
    def __init__(self, tmp: Path) -> None:
        super().__init__()
        self.operator = LS.OperatorSide()
        self.syncer = ClusterSyncer(NODE, self.consumer, self.identities, tmp)
        self.sent = 0

    def wire(self, ns: str, name: str, ip: str, eid: int) -> None:
        ref = ObjectRef(ns, name)
        self.endpoints[ref] = LocalEndpoint(f"c{eid}/eth0", eid, IPv4Address(ip))
        self.policy.on_endpoint(ref, self.endpoints[ref])
        self.consumer.apply_recorded()

    def feed(self, *objs: JSON, deleted: bool = False) -> None:
        for obj in objs:
            self.operator.feed(obj, deleted)
        self.operator.commit()
        log = self.operator.log
        if self.sent == 0:
            version, objects = log.snapshot()
            self.syncer.apply_update(StateUpdate(version, log.stream_id, True, [Change((o.kind, o.key), o) for o in objects]))
        else:
            for delta in log.deltas_after(self.sent):
                self.syncer.apply_update(StateUpdate(delta.version, log.stream_id, False, list(delta.changes),
                                                     base_version=delta.version - 1))
        self.sent = log.version


def pod(name: str, ip: str | None, node: str = NODE, **labels: str) -> JSON:
    obj = LS.pod("shop", name, ip or "0.0.0.0", node=node, **labels)
    if ip is None:
        del obj["status"]  # a local pod applied without addresses: CNI gives it one
    return obj


def policy(app: str, from_app: str) -> JSON:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": f"{app}-in", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": from_app}}}],
                                  "ports": [{"port": "http"}]}]}}


def maps_of(side: Side) -> tuple[object, ...]:
    return (dict(side.maps.policy), dict(side.maps.ipcache), dict(side.maps.cidrs), dict(side.endpoint_identity))


def test_the_same_objects_through_either_source_give_the_same_maps(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cluster, local = Cluster(tmp_path / "a"), Standalone(tmp_path / "b")
    nodes = [LS.node(NODE, "192.0.2.1", "10.1.1.0/24"), LS.node("n2", "192.0.2.2", "10.1.2.0/24")]
    common = [LS.namespace("shop", team="a"), *nodes, pod("other", "10.1.2.7", node="n2", app="web"),
              pod("stranger", "10.1.2.8", node="n2", app="x"), policy("db", "web")]
    # In a cluster the kubelet reports the local pods' addresses; standalone, CNI gives them.
    cluster.feed(*common, pod("web", "10.1.1.5", app="web"), pod("db", "10.1.1.6", app="db"))
    local.apply(*common, pod("web", None, app="web"), pod("db", None, app="db"))
    for side in (cluster, local):
        side.wire("shop", "web", "10.1.1.5", 1)
        side.wire("shop", "db", "10.1.1.6", 2)
    assert maps_of(local) == maps_of(cluster)
    db = ObjectRef("shop", "db")
    assert local.allowed("10.1.2.7", db) and local.allowed("10.1.1.5", db) and not local.allowed("10.1.2.8", db)
    assert local.maps.ipcache[IPv4Network("10.1.2.7/32")].tunnel_endpoint == IPv4Address("192.0.2.2")
    # the same changes, as deltas: a relabel, a namespace's labels, a policy gone
    for change in ([pod("other", "10.1.2.7", node="n2", app="x")], [LS.namespace("shop", team="b")]):
        cluster.feed(*change)
        local.apply(*change)
        assert maps_of(local) == maps_of(cluster)
    assert not local.allowed("10.1.2.7", db)
    cluster.feed(policy("db", "web"), deleted=True)
    local.delete(policy("db", "web"))
    assert maps_of(local) == maps_of(cluster) and local.allowed("10.1.2.8", db)


def test_a_local_endpoint_no_object_describes_is_numbered_at_once_as_its_namespace(tmp_path: Path) -> None:
    local = Standalone(tmp_path)
    local.apply(LS.namespace("shop", team="a"), policy("db", "web"))
    identity = local.wire("shop", "db", "10.1.1.6", 2)  # no Pod object: CNI only
    assert identity is not None and identity >= CLUSTER_IDENTITY_MIN  # answered with the ADD, not INIT
    assert local.endpoint_identity["c2/eth0"] == identity == local.identity("10.1.1.6")
    assert local.identities.labels_of(identity) is not None
    assert str(local.identities.labels_of(identity)) == str(local.identities.labels_of(local.wire("shop", "x", "10.1.1.9", 9)))
    assert not local.policy.isolating(ObjectRef("shop", "db"), Direction.INGRESS)  # no app=db label: open


def test_a_pod_whose_namespace_is_not_stored_takes_empty_namespace_labels(tmp_path: Path) -> None:
    local = Standalone(tmp_path)
    local.apply(pod("web", None, app="web"), pod("db", None, app="db"), policy("db", "web"))
    local.wire("shop", "web", "10.1.1.5", 1)
    local.wire("shop", "db", "10.1.1.6", 2)
    db = ObjectRef("shop", "db")
    before = local.identity("10.1.1.5")
    assert local.allowed("10.1.1.5", db) and before >= CLUSTER_IDENTITY_MIN
    local.apply(LS.namespace("shop", team="a"))  # the namespace's labels are part of the identity
    assert local.identity("10.1.1.5") != before and local.allowed("10.1.1.5", db)


def test_a_pod_deleted_from_the_store_while_wired_keeps_running_as_a_bare_pod_until_cni_del(tmp_path: Path) -> None:
    local = Standalone(tmp_path)
    local.apply(LS.namespace("shop"), pod("web", None, app="web"), pod("db", None, app="db"), policy("db", "web"))
    local.wire("shop", "web", "10.1.1.5", 1)
    local.wire("shop", "db", "10.1.1.6", 2)
    db = ObjectRef("shop", "db")
    assert local.allowed("10.1.1.5", db)
    local.delete(pod("web", None))
    assert IPv4Network("10.1.1.5/32") in local.maps.ipcache and not local.allowed("10.1.1.5", db)
    assert local.endpoint_identity["c1/eth0"] == local.identity("10.1.1.5")
    local.unwire("shop", "web")
    assert IPv4Network("10.1.1.5/32") not in local.maps.ipcache


def test_store_batches_are_the_local_streams_versions_and_a_refused_one_is_rolled_back(tmp_path: Path) -> None:
    local = Standalone(tmp_path)
    first = local.apply(LS.namespace("shop"), pod("db", None, app="db"))
    local.wire("shop", "db", "10.1.1.6", 2)
    again = local.apply(LS.namespace("shop"))  # unchanged: nothing new to enforce
    assert again == local.consumer.version and again > first
    assert local.consumer.ledger.outcome(again) == "enforced"
    local.maps.capacities["policy"] = len(local.maps.policy) + 1
    big = {**policy("db", "web"), "spec": {**policy("db", "web")["spec"], "ingress": [
        {"from": [{"ipBlock": {"cidr": f"10.9.{i}.0/24"}}], "ports": [{"port": 1000 + i}]} for i in range(8)]}}
    with pytest.raises(RequestError) as refused:
        local.apply(big)
    assert refused.value.code == 507 and "policy map" in refused.value.msg
    assert local.store.count("NetworkPolicy") == 0  # rolled back in the store
    status = local.consumer.ledger.status()
    assert status["last_refused"]["version"] == again + 1 and status["enforced_version"] == again + 2
    assert not [k for k in local.maps.policy if k.port == 1000]


def test_prepared_ahead_the_restore_records_the_same_snapshot_and_numbering(tmp_path: Path) -> None:
    """The agent feeds the stored objects while the datapath compiles (`prepare`) and restores
    the endpoints after: the same snapshot, versions and identity numbers as one `restore`."""
    first = Standalone(tmp_path / "state")
    first.apply(LS.namespace("shop"), pod("a", "10.1.1.5", app="web"), pod("b", None, app="db"),
                pod("peer", "10.2.0.7", node="n2", app="web"), policy("db", "web"))
    first.wire("shop", "b", "10.1.1.9", 7)
    first.wire("shop", "c", "10.1.1.10", 8)  # no object describes it
    restored = [(ObjectRef("shop", "b"), ("10.1.1.9",), first.identities.identity_of(ObjectRef("shop", "b")) or 0),
                (ObjectRef("shop", "c"), ("10.1.1.10",), first.identities.identity_of(ObjectRef("shop", "c")) or 0)]
    first.store.db.close()

    def restart(ahead: bool) -> tuple[object, ...]:
        side = Side()
        db = open_state(tmp_path / "state").db
        store = ObjectStore(db)
        loaded = store.load()
        syncer = StoreSyncer(NODE, side.consumer, store, IdentityBook(db), IPv4Network("10.1.1.0/24"),
                             lambda _cidr: None, loaded=loaded)
        if ahead:
            syncer.prepare()
            syncer.prepare()  # once only
        count = syncer.restore(restored)
        version, objects = syncer.source.log.snapshot()
        db.close()
        return count, version, sorted((o.kind, o.key, repr(o)) for o in objects), dict(syncer.book.allocator.items())

    assert restart(ahead=True) == restart(ahead=False)
