"""Kubernetes mode: state stream updates -> the policy manager -> fake maps. Real decisions are
asserted with the engine's model of the BPF lookup (`lookup_flat`), for the same updates
replayed in several orders and chunkings."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from membrane.agent.cluster_syncing import ClusterSyncer
from membrane.agent.identity_sources import INIT_IDENTITY, StreamIdentities
from membrane.agent.policy_records import POLICY_KINDS, PolicyRecords
from membrane.agent.policy_syncing import LocalEndpoint, PolicyManager
from membrane.agent.state_consuming import StateConsumer
from membrane.api.state_objects import (
    Change,
    EndpointState,
    IdentityState,
    NamedPortState,
    NamespaceState,
    NodeState,
    PolicyState,
    StateObject,
    StateUpdate,
)
from membrane.k8s_models import ObjectRef
from membrane.policy import Direction, Protocol, lookup_flat
from membrane_testkit.fake_maps import FakePolicyMaps

NODE = "n1"
STREAM = "stream-a"
WEB_ID, DB_ID, OTHER_ID = 300, 301, 302


FakeMaps = FakePolicyMaps


def ns(name: str, **labels: str) -> NamespaceState:
    return NamespaceState.of(name, {"kubernetes.io/metadata.name": name, **labels})


def ep(name: str, ip: str, identity: int, node: str = NODE, **labels: str) -> EndpointState:
    return EndpointState("shop", name, (ip,), identity, node, tuple(sorted(labels.items())),
                         (NamedPortState("http", "TCP", 80),), f"uid-{name}")


def ident(number: int, app: str) -> IdentityState:
    return IdentityState(number, (f"k8s:app={app}", "k8s:io.kubernetes.pod.namespace=shop"))


def netpol(name: str, ingress_from: dict[str, str], port: int | str = 80) -> PolicyState:
    obj = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": ingress_from}}], "ports": [{"port": port}]}]}}
    return PolicyState("shop", name, json.dumps(obj, sort_keys=True))


WEB, DB, OTHER, WEB2 = (ObjectRef("shop", n) for n in ("web", "db", "other", "web2"))
IPS = {WEB: "10.0.1.2", DB: "10.0.1.3", OTHER: "10.0.2.5", WEB2: "10.0.2.6"}
LOCAL_IDS = {WEB: 1, DB: 2}

OBJECTS: dict[str, StateObject] = {
    "ns": ns("shop", team="a"),
    "node": NodeState(NODE, ("192.0.2.1",), "10.0.1.0/24"),
    "node2": NodeState("n2", ("192.0.2.2",), "10.0.2.0/24"),
    "ids": ident(WEB_ID, "web"),
    "id_db": ident(DB_ID, "db"),
    "web": ep("web", IPS[WEB], WEB_ID, app="web"),
    "db": ep("db", IPS[DB], DB_ID, app="db"),
    "other": ep("other", IPS[OTHER], OTHER_ID, node="n2", app="other"),  # remote peer
    "web2": ep("web2", IPS[WEB2], WEB_ID, node="n2", app="web"),  # remote peer with web's identity
    "policy": netpol("db-from-web", {"app": "web"}),
}


class Agent:
    """One agent's policy side in Kubernetes mode, with fake maps and endpoint map."""

    def __init__(self, tmp: Path, identity_wait: float = 0.05) -> None:
        self.maps = FakeMaps()
        self.endpoint_identity: dict[str, int] = {}
        self.identities = StreamIdentities()
        self.policy = PolicyManager(self.identities, self.maps, self.endpoint_identity.__setitem__,
                                    lambda: ["198.18.0.1"])
        self.cidrs: list[IPv4Network] = []
        self.synced = 0
        self.consumer = StateConsumer(NODE)
        self.records = PolicyRecords(NODE, self.policy, self.identities)
        for kind in POLICY_KINDS:
            self.consumer.register(kind, self.records)
        self.consumer.on_synced.append(self._synced)
        self.syncer = ClusterSyncer(NODE, self.consumer, self.identities, tmp, self.cidrs.append, identity_wait)
        self.version = 0

    def _synced(self) -> None:
        self.synced += 1

    def local(self, ref: ObjectRef) -> None:
        self.policy.on_endpoint(ref, LocalEndpoint(f"c{LOCAL_IDS[ref]}/eth0", LOCAL_IDS[ref], IPv4Address(IPS[ref])))
        self.policy.apply()

    def gone(self, ref: ObjectRef) -> None:
        self.policy.on_endpoint(ref, None)
        self.records.endpoint_removed(ref)
        self.policy.apply()

    def delta(self, *objs: StateObject, deletes: tuple[StateObject, ...] = ()) -> None:
        self.version += 1
        changes = [Change((o.kind, o.key), o) for o in objs] + [Change((o.kind, o.key), None) for o in deletes]
        self.syncer.apply_update(StateUpdate(self.version, STREAM, False, changes))

    def snapshot(self, *objs: StateObject, version: int | None = None, stream: str = STREAM) -> None:
        self.version = version if version is not None else self.version + 1
        self.syncer.apply_update(StateUpdate(self.version, stream, True, [Change((o.kind, o.key), o) for o in objs]))

    def identity(self, ref: ObjectRef) -> int:
        value = self.maps.ipcache[IPv4Network(f"{IPS[ref]}/32")]
        return value if isinstance(value, int) else value.identity  # remote pods: entry with tunnel endpoint

    def allowed(self, src: ObjectRef, dst: ObjectRef, port: int = 80) -> bool:
        """Egress at a local source, ingress at a local destination, like from_container."""
        src_id, dst_id = self.identity(src), self.identity(dst)
        if src in self.policy.local:
            eg = lookup_flat(self.maps.policy, LOCAL_IDS[src], Direction.EGRESS, dst_id, Protocol.TCP, port)
            if not (eg and eg.verdict == 1):
                return False
        if dst in self.policy.local:
            ing = lookup_flat(self.maps.policy, LOCAL_IDS[dst], Direction.INGRESS, src_id, Protocol.TCP, port)
            if not (ing and ing.verdict == 1):
                return False
        return True

    def canonical(self) -> tuple[set[tuple[object, ...]], dict[IPv4Network, int], dict[str, int]]:
        policy = {(k.endpoint_id, k.identity, k.direction, k.protocol, k.port, k.port_prefix, v.verdict,
                   tuple(self.policy.rules.describe(v.rule_ref))) for k, v in self.maps.policy.items()}
        return policy, dict(self.maps.ipcache), dict(self.endpoint_identity)


def expect_final(a: Agent) -> None:
    assert a.allowed(WEB, DB) and a.allowed(WEB2, DB)  # local and remote web
    assert not a.allowed(OTHER, DB) and not a.allowed(WEB, DB, 81)
    assert a.allowed(DB, WEB) and a.allowed(DB, OTHER)  # db isolated for ingress only
    assert a.identity(OTHER) == OTHER_ID and a.identity(WEB2) == WEB_ID  # remote pods: ipcache only
    assert a.endpoint_identity == {"c1/eth0": WEB_ID, "c2/eth0": DB_ID}
    assert {k.endpoint_id for k in a.maps.policy} <= set(LOCAL_IDS.values())  # only local endpoints get entries
    assert a.syncer.pod_cidr == IPv4Network("10.0.1.0/24") and a.cidrs == [IPv4Network("10.0.1.0/24")]


def reference(tmp: Path) -> Agent:
    a = Agent(tmp / "ref")
    a.local(WEB)
    a.local(DB)
    a.snapshot(*OBJECTS.values())
    expect_final(a)
    return a


STEPS = [*OBJECTS, "local-web", "local-db"]


def _orders(count: int) -> list[tuple[str, ...]]:
    rng = random.Random(7)
    orders = [tuple(STEPS), tuple(reversed(STEPS))]
    while len(orders) < count:
        order = list(STEPS)
        rng.shuffle(order)
        orders.append(tuple(order))
    return orders


@pytest.mark.parametrize("order", _orders(12))
def test_deltas_in_any_order_give_the_snapshot_maps(tmp_path: Path, order: tuple[str, ...]) -> None:
    a = Agent(tmp_path / "a")
    a.snapshot()  # an operator with an empty cluster
    assert a.synced == 1
    for step in order:
        if step.startswith("local-"):
            a.local(WEB if step == "local-web" else DB)
        else:
            a.delta(OBJECTS[step])
    expect_final(a)
    assert a.canonical() == reference(tmp_path).canonical()
    assert a.syncer.version == len(OBJECTS) + 1 and a.synced == 1


@pytest.mark.parametrize("chunks", [1, 2, 3, 5])
def test_chunked_deltas_then_a_snapshot_writes_nothing_more(tmp_path: Path, chunks: int) -> None:
    a = Agent(tmp_path)
    a.snapshot()
    a.local(DB)
    objs = list(OBJECTS.values())
    for index in range(chunks):
        a.delta(*objs[index::chunks])
    a.local(WEB)
    expect_final(a)
    writes = a.maps.writes
    a.snapshot(*reversed(objs))  # the same state again (a reconnect to a restarted operator)
    assert a.maps.writes == writes and a.synced == 1 and a.syncer.counts["snapshots"] == 2
    expect_final(a)


def test_snapshot_removes_what_it_no_longer_holds(tmp_path: Path) -> None:
    a = reference(tmp_path)
    assert not a.allowed(OTHER, DB)
    a.snapshot(*[o for k, o in OBJECTS.items() if k not in ("policy", "web2")], version=1, stream="stream-b")
    assert a.allowed(OTHER, DB)  # policy gone
    assert IPv4Network(f"{IPS[WEB2]}/32") not in a.maps.ipcache  # remote pod gone
    assert a.syncer.stream_id == "stream-b" and a.syncer.version == 1


def test_identity_arrives_after_the_endpoint_without_a_gap(tmp_path: Path) -> None:
    """CNI ADD before the pod is streamed: INIT first, its real identity in place later, and
    once web -> db is allowed no single map write takes it away."""
    a = Agent(tmp_path)
    a.snapshot(*[o for k, o in OBJECTS.items() if k != "web"])
    a.local(DB)
    assert a.syncer.before_add("shop", "web") == INIT_IDENTITY  # waited 0.05 s, not streamed
    a.local(WEB)
    assert a.endpoint_identity["c1/eth0"] == INIT_IDENTITY and a.identity(WEB) == INIT_IDENTITY
    assert not a.allowed(WEB, DB)  # INIT is nobody the policy allows
    seen_allowed: list[bool] = []

    def check() -> None:
        if IPv4Network(f"{IPS[WEB]}/32") in a.maps.ipcache:
            now = a.allowed(WEB, DB)
            assert now or not any(seen_allowed), "web -> db dropped during an update"
            seen_allowed.append(now)

    a.maps.check = check
    a.delta(OBJECTS["web"])
    assert a.allowed(WEB, DB) and a.endpoint_identity["c1/eth0"] == WEB_ID
    # Further churn (another policy, a relabel of db's peers) never drops web -> db either.
    a.delta(netpol("db-from-web-81", {"app": "web"}, 81))
    a.delta(OBJECTS["policy"], deletes=())
    a.delta(deletes=(netpol("db-from-web-81", {"app": "web"}, 81),))
    assert a.allowed(WEB, DB) and all(seen_allowed[seen_allowed.index(True):])
    expect_final(a)


def test_before_add_returns_the_identity_once_streamed(tmp_path: Path) -> None:
    import threading

    a = Agent(tmp_path, identity_wait=5.0)
    a.snapshot(*[o for k, o in OBJECTS.items() if k != "web"])
    timer = threading.Timer(0.1, lambda: a.delta(OBJECTS["web"]))
    timer.start()
    assert a.syncer.before_add("shop", "web") == WEB_ID
    timer.join()


def test_terminating_local_pod_keeps_its_identity_until_cni_del(tmp_path: Path) -> None:
    a = reference(tmp_path)
    a.delta(deletes=(OBJECTS["web"],))  # the operator stops streaming a terminating pod
    assert a.allowed(WEB, DB) and a.endpoint_identity["c1/eth0"] == WEB_ID
    assert len(a.records.lingering) == 1
    a.gone(WEB)  # CNI DEL
    assert IPv4Network(f"{IPS[WEB]}/32") not in a.maps.ipcache
    assert not a.records.lingering and a.allowed(WEB2, DB)


def test_remote_pod_delete_removes_its_ipcache_entry(tmp_path: Path) -> None:
    a = reference(tmp_path)
    a.delta(deletes=(OBJECTS["other"],))
    assert IPv4Network(f"{IPS[OTHER]}/32") not in a.maps.ipcache
    assert a.allowed(WEB, DB)


def test_relabel_in_the_stream_moves_reachability(tmp_path: Path) -> None:
    a = reference(tmp_path)
    a.delta(ident(303, "web-ish"), ep("other", IPS[OTHER], WEB_ID, node="n2", app="web"))
    assert a.allowed(OTHER, DB) and a.identity(OTHER) == WEB_ID
    a.delta(ns("shop", team="b"))  # namespace relabel: pods keep their streamed identities
    assert a.allowed(OTHER, DB) and a.identity(WEB) == WEB_ID


def test_pod_streamed_before_it_has_an_address(tmp_path: Path) -> None:
    """Should the operator stream scheduled pods before kubelet reports their IP, CNI ADD finds
    the identity at once and the local address is the one in the ipcache."""
    a = Agent(tmp_path, identity_wait=5.0)
    early = EndpointState("shop", "web", (), WEB_ID, NODE, (("app", "web"),))
    a.snapshot(*[o for k, o in OBJECTS.items() if k != "web"], early)
    a.local(DB)
    assert a.syncer.before_add("shop", "web") == WEB_ID  # no wait
    a.local(WEB)
    assert a.identity(WEB) == WEB_ID and a.allowed(WEB, DB)
    assert a.endpoint_identity["c1/eth0"] == WEB_ID


def test_identity_listing_comes_from_the_stream(tmp_path: Path) -> None:
    a = reference(tmp_path)
    rows = {r["identity"]: r for r in a.identities.listing()}
    assert rows[INIT_IDENTITY]["reserved"] and rows[WEB_ID]["labels"] == list(OBJECTS["ids"].labels)
    assert rows[WEB_ID]["owners"] == ["shop/web", "shop/web2"] and rows[DB_ID]["owners"] == ["shop/db"]
    assert a.identities.gc() == [] and len(a.identities) == 2


def test_flow_directory_works_on_streamed_identities(tmp_path: Path) -> None:
    from membrane.agent.flow_directory import PolicyDirectory

    a = reference(tmp_path)
    directory = PolicyDirectory(a.policy)
    assert list(directory.identity_labels(WEB_ID) or []) == list(OBJECTS["ids"].labels)
    assert directory.identity_labels(999) is None
    info = directory.lookup_ip(IPS[WEB2])
    assert info is not None and info.identity == WEB_ID and info.pod == "web2"


def test_an_update_a_map_cannot_hold_is_recorded_but_not_acked(tmp_path: Path) -> None:
    """Kubernetes mode, full policy map: nothing of the update is written, the old policy stays
    enforced, the returned (acked) version stays the last enforced one; once the cluster's
    state fits again (the big policy gone), the next update enforces everything pending."""
    a = Agent(tmp_path)
    enforced = [a.syncer.apply_update(StateUpdate(1, STREAM, True, [
        Change((o.kind, o.key), o) for o in (OBJECTS["ns"], OBJECTS["node"], OBJECTS["ids"], OBJECTS["id_db"],
                                             OBJECTS["web"], OBJECTS["db"], OBJECTS["policy"])]))]
    a.version = 1
    a.local(WEB)
    a.local(DB)
    assert enforced == [1] and a.allowed(WEB, DB) and not a.allowed(WEB, DB, 81)
    a.maps.capacities["policy"] = len(a.maps.policy) + 5
    held = dict(a.maps.policy)
    big = json.loads(netpol("big", {"app": "web"}).object_json)
    big["spec"]["ingress"][0]["ports"] = [{"port": 1000 + 2 * i} for i in range(50)]
    big_state = PolicyState("shop", "big", json.dumps(big, sort_keys=True))
    a.version = 2
    assert a.syncer.apply_update(StateUpdate(2, STREAM, False, [Change((big_state.kind, big_state.key), big_state)])) == 1
    assert a.maps.policy == held and a.syncer.counts["refused"] == 1
    assert a.syncer.version == 2 and a.syncer.ledger.outcome(2) == "refused"  # recorded, resume point moved
    # Another change while the big one is pending: still refused (the whole difference is pending).
    assert a.syncer.apply_update(StateUpdate(3, STREAM, False, [Change((OBJECTS["other"].kind, OBJECTS["other"].key),
                                                                       OBJECTS["other"])])) == 1
    # The big policy is deleted: everything pending fits and is enforced, version 4 acked.
    assert a.syncer.apply_update(StateUpdate(4, STREAM, False, [Change((big_state.kind, big_state.key), None)])) == 4
    assert a.allowed(WEB, DB) and not a.allowed(WEB, DB, 1000) and a.identity(OTHER) == OTHER_ID
