"""Kubernetes mode: the applied state survives an agent restart (version, stream id, objects),
resumes on the real gRPC stream with only the missing deltas, survives an operator restart
(a new history: one snapshot, only differences written), and the CNI gate."""

from __future__ import annotations

import dataclasses
import json
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from membrane.agent.cluster_syncing import (
    ClusterSyncer,
    ResyncNeeded,
    grpc_target,
    saved_pod_cidr,
)
from membrane.agent.config import load_config
from membrane.agent.identity_sources import StreamIdentities
from membrane.agent.policy_records import POLICY_KINDS, PolicyRecords
from membrane.agent.policy_syncing import LocalEndpoint, PolicyManager
from membrane.agent.state_consuming import StateConsumer
from membrane.agent.state_storing import LEGACY_BACKUP, open_state
from membrane.api.state_codec import object_bytes, object_from_bytes
from membrane.api.state_objects import (
    Change,
    EndpointState,
    IdentityState,
    Kind,
    NamedPortState,
    NamespaceState,
    NodeState,
    PolicyState,
    StateObject,
    StateUpdate,
)
from membrane.cni_types import TRY_AGAIN_LATER, CniError
from membrane.k8s_models import ObjectRef
from membrane.operator.metrics import OperatorMetrics
from membrane.operator.propagation import PropagationTracker
from membrane.operator.state_log import StateLog
from membrane.operator.state_serving import StateServicer, serve, stop
from membrane.policy import Direction, Protocol, lookup_flat
from membrane_testkit.fake_maps import FakePolicyMaps
from membrane_testkit.waiting import wait_for

NODE = "n1"


FakeMaps = FakePolicyMaps


class Agent:
    """The agent's Kubernetes-mode policy side; the maps survive a "restart" (they are pinned)."""

    def __init__(self, state_dir: Path, maps: FakeMaps | None = None) -> None:
        self.maps = maps or FakeMaps()
        self.identities = StreamIdentities()
        self.endpoint_identity: dict[str, int] = {}
        self.policy = PolicyManager(self.identities, self.maps, self.endpoint_identity.__setitem__, list)
        self.cidrs: list[IPv4Network] = []
        self.consumer = StateConsumer(NODE)
        self.records = PolicyRecords(NODE, self.policy, self.identities)
        for kind in POLICY_KINDS:
            self.consumer.register(kind, self.records)
        self.syncer = ClusterSyncer(NODE, self.consumer, self.identities, state_dir, self.cidrs.append,
                                    identity_wait=0.01)

    def start(self) -> Agent:
        """What the agent's start() does: restore, local endpoints, resync against the maps."""
        self.syncer.restore()
        self.policy.on_endpoint(DB, LocalEndpoint("c2/eth0", 2, IPv4Address("10.0.1.3")))
        self.policy.resync()
        return self

    def allowed_into_db(self, src_identity: int, port: int = 80) -> bool:
        found = lookup_flat(self.maps.policy, 2, Direction.INGRESS, src_identity, Protocol.TCP, port)
        return bool(found and found.verdict == 1)


DB, WEB = ObjectRef("shop", "db"), ObjectRef("shop", "web")
POLICY = PolicyState("shop", "db", json.dumps({
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "db", "namespace": "shop"},
    "spec": {"podSelector": {"matchLabels": {"app": "db"}},
             "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 80}]}]}}))
BASE: list[StateObject] = [
    NamespaceState.of("shop", {"kubernetes.io/metadata.name": "shop"}),
    NodeState(NODE, ("192.0.2.1",), "10.0.1.0/24"),
    IdentityState(300, ("k8s:app=web",)), IdentityState(301, ("k8s:app=db",)),
    EndpointState("shop", "db", ("10.0.1.3",), 301, NODE, (("app", "db"),), (NamedPortState("http", "TCP", 80),)),
    EndpointState("shop", "web", ("10.0.2.7",), 300, "n2", (("app", "web"),)),
    POLICY,
]


def update(version: int, objs: list[StateObject], snapshot: bool = False, stream: str = "s1",
           deletes: list[StateObject] | None = None) -> StateUpdate:
    changes = [Change((o.kind, o.key), o) for o in objs] + [Change((o.kind, o.key), None) for o in deletes or []]
    return StateUpdate(version, stream, snapshot, changes)


def test_stored_round_trip_of_every_kind() -> None:
    for obj in BASE:
        assert object_from_bytes(object_bytes(obj)) == obj
    with pytest.raises(ValueError, match="not a stored object"):
        object_from_bytes(b"\xff\xff garbage")


def test_restart_restores_state_version_and_pod_cidr(tmp_path: Path) -> None:
    first = Agent(tmp_path).start()
    first.syncer.apply_update(update(1, BASE, snapshot=True))
    first.syncer.apply_update(update(2, [IdentityState(302, ("k8s:app=x",))]))
    assert first.allowed_into_db(300) and not first.allowed_into_db(302)
    db = open_state(tmp_path).db  # a second connection, as a restarted agent's
    assert saved_pod_cidr(db, NODE) == IPv4Network("10.0.1.0/24") and saved_pod_cidr(db, "n9") is None

    second = Agent(tmp_path, first.maps)
    writes = first.maps.writes
    second.start()
    assert second.maps.writes == writes  # the same state: nothing rewritten
    assert second.syncer.synced.is_set() and (second.syncer.version, second.syncer.stream_id) == (2, "s1")
    assert second.syncer.objects == first.syncer.objects and second.cidrs == [IPv4Network("10.0.1.0/24")]
    assert second.endpoint_identity == {"c2/eth0": 301}
    second.syncer.apply_update(update(3, [], deletes=[POLICY]))  # resumes with the next delta
    assert second.allowed_into_db(302)


def test_delta_that_does_not_follow_asks_for_a_snapshot(tmp_path: Path) -> None:
    a = Agent(tmp_path).start()
    a.syncer.apply_update(update(1, BASE, snapshot=True))

    class Client:
        last_version, stream_id = 1, "s1"

    client = a.syncer.client = Client()
    with pytest.raises(ResyncNeeded):
        a.syncer.apply_update(update(3, []))
    assert (client.last_version, client.stream_id) == (0, "")
    with pytest.raises(ResyncNeeded):
        a.syncer.apply_update(update(2, [], stream="other"))
    assert a.syncer.version == 1 and a.allowed_into_db(300)  # nothing applied, nothing lost


def test_batched_delta_applies_as_one_step_and_persists(tmp_path: Path) -> None:
    """A lagging agent may get versions 2..4 in one delta (base_version 1): applied and
    persisted as version 4 (its rows and version in one transaction)."""
    a = Agent(tmp_path).start()
    a.syncer.apply_update(update(1, BASE, snapshot=True))
    batch = update(4, [IdentityState(302, ("k8s:app=x",))], deletes=[POLICY])
    batch.base_version = 1
    a.syncer.apply_update(batch)
    assert a.syncer.version == 4 and a.allowed_into_db(302)
    stale = update(6, [])
    stale.base_version = 2  # does not start where this agent is
    with pytest.raises(ResyncNeeded):
        a.syncer.apply_update(stale)
    a.syncer.apply_update(update(5, [IdentityState(303, ("k8s:app=y",))]))  # single versions again

    b = Agent(tmp_path, a.maps).start()
    assert (b.syncer.version, b.syncer.objects) == (5, a.syncer.objects)


def test_bad_policy_object_is_skipped_not_fatal(tmp_path: Path) -> None:
    a = Agent(tmp_path).start()
    bad = PolicyState("shop", "broken", "{not json")
    a.syncer.apply_update(update(1, [*BASE, bad], snapshot=True))
    assert a.syncer.counts["skipped_objects"] == 1 and a.syncer.version == 1 and a.allowed_into_db(300)


def test_cni_gate_waits_for_the_pod_cidr(tmp_path: Path) -> None:
    a = Agent(tmp_path).start()
    with pytest.raises(CniError) as err:
        a.syncer.before_add("shop", "web")
    assert err.value.code == TRY_AGAIN_LATER
    a.syncer.apply_update(update(1, BASE, snapshot=True))
    assert a.syncer.before_add("shop", "web") == 300  # already streamed: no wait
    assert a.syncer.before_add("shop", "new") == 5  # not streamed: INIT after the wait
    assert a.syncer.before_add("", "") == 5  # no pod metadata at all


def test_config_modes() -> None:
    standalone = load_config([], {})
    assert standalone.mode == "standalone" and standalone.operator_address is None
    assert standalone.cluster_cidr == standalone.pod_cidr
    kube = load_config(["--mode", "kubernetes", "--operator-address", "unix:///run/op.sock",
                        "--identity-wait-seconds", "0.5", "--tls-dir", "/etc/membrane/tls"], {})
    assert kube.mode == "kubernetes" and kube.operator_address == "unix:///run/op.sock"
    assert kube.identity_wait_seconds == 0.5 and str(kube.tls_path) == "/etc/membrane/tls"
    env = load_config([], {"MEMBRANE_MODE": "kubernetes", "MEMBRANE_OPERATOR_ADDRESS": "127.0.0.1:4250",
                           "MEMBRANE_INSECURE_PLAINTEXT": "true"})
    assert env.mode == "kubernetes" and env.insecure_plaintext
    boot = load_config(["--mode", "kubernetes", "--operator-address", "127.0.0.1:4250", "--tls-bootstrap"], {})
    assert boot.tls_bootstrap and boot.tls_path == boot.state_dir / "tls"
    # Kubernetes mode (and --observer-tcp) without TLS only when asked for explicitly.
    with pytest.raises(SystemExit, match="mutual TLS"):
        load_config(["--mode", "kubernetes", "--operator-address", "127.0.0.1:4250"], {})
    with pytest.raises(SystemExit, match="mutual TLS"):
        load_config(["--observer-tcp", "127.0.0.1:4245"], {})
    assert load_config(["--observer-tcp", "127.0.0.1:4245", "--insecure-plaintext"], {}).insecure_plaintext
    with pytest.raises(SystemExit):
        load_config(["--mode", "kubernetes"], {})
    with pytest.raises(SystemExit):
        load_config(["--mode", "cluster"], {})


def test_grpc_targets() -> None:
    assert grpc_target("127.0.0.1:4250") == "127.0.0.1:4250"
    assert grpc_target("unix:///run/x.sock") == "unix:///run/x.sock"
    assert grpc_target("unix:/run/x.sock") == "unix:/run/x.sock"
    assert grpc_target("unix://x.sock").startswith("unix:/") and grpc_target("unix://x.sock").endswith("/x.sock")


class Operator:
    """A StateService over a StateLog the test commits to (one operator process)."""

    def __init__(self, address: str) -> None:
        self.log = StateLog(100)
        self.metrics = OperatorMetrics()
        self.tracker = PropagationTracker(self.metrics.propagation.observe)
        self.servicer = StateServicer(self.log, self.tracker, self.metrics, ready=lambda: True)
        self.server, _ = serve(self.servicer, address)
        self.objects: dict[tuple[Kind, str], StateObject] = {}

    def put(self, *objs: StateObject, drop: tuple[StateObject, ...] = ()) -> int:
        for obj in objs:
            self.objects[(obj.kind, obj.key)] = obj
        for obj in drop:
            self.objects.pop((obj.kind, obj.key))
        delta = self.log.commit(dict(self.objects), time.monotonic())
        assert delta is not None
        self.tracker.committed(delta.version, delta.seen_at)
        return delta.version

    def sample(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0

    def stop(self) -> None:
        stop(self.server, self.servicer, grace=0.2)


def test_real_stream_resume_and_operator_restart(tmp_path: Path) -> None:
    sock = tmp_path / "op.sock"
    op = Operator(f"unix:{sock}")
    op.put(*BASE)
    a = Agent(tmp_path / "state").start()
    a.syncer.start(f"unix://{sock}")
    try:
        assert wait_for(lambda: a.syncer.synced.is_set() and a.allowed_into_db(300))
        assert wait_for(lambda: op.tracker.acked_version(NODE) == 1)  # acked once in the maps
        version = op.put(IdentityState(303, ("k8s:app=y",)), drop=(POLICY,))
        assert wait_for(lambda: a.syncer.version == version and a.allowed_into_db(303))
        assert wait_for(lambda: op.tracker.acked_version(NODE) == version)
        assert op.sample("membrane_operator_state_propagation_seconds_count") >= 1
        a.syncer.stop()
    finally:
        a.syncer.stop()

    # Agent restart: resumes from its persisted version; the operator sends the missed delta only.
    version = op.put(POLICY)
    b = Agent(tmp_path / "state", a.maps).start()
    assert b.allowed_into_db(303)  # restored state: the policy is not back yet
    snapshots = op.sample("membrane_operator_state_snapshots_sent_total")
    b.syncer.start(f"unix://{sock}")
    try:
        assert wait_for(lambda: b.syncer.version == version and not b.allowed_into_db(303))
        assert op.sample("membrane_operator_state_snapshots_sent_total") == snapshots
        print("COUNTS", b.syncer.counts, b.syncer.version, version, a.syncer.version)
        assert b.syncer.counts == {**b.syncer.counts, "snapshots": 0, "deltas": 1}

        # Operator restart: a new history. Meanwhile the maps keep the last state.
        op.stop()
        time.sleep(0.3)  # observation window: the agent notices the loss and must keep the maps as they were
        assert b.allowed_into_db(300) and not b.allowed_into_db(303)
        writes = b.maps.writes
        op = Operator(f"unix:{sock}")
        op.put(*BASE)
        assert wait_for(lambda: b.syncer.stream_id == op.log.stream_id)
        assert b.syncer.counts["snapshots"] == 1 and b.maps.writes == writes  # same state: nothing rewritten
        assert b.allowed_into_db(300)
    finally:
        b.syncer.stop()
        op.stop()


def legacy_cache(state: Path) -> None:
    """The JSON cache an earlier release wrote: a base (version 1) and a journal of two deltas,
    the last line torn by a kill -9 mid-write (never acked)."""
    def as_json(obj: StateObject) -> dict[str, object]:
        return {"kind": obj.kind.value, **json.loads(json.dumps(dataclasses.asdict(obj)))}
    (state / "cluster-state.json").write_text(json.dumps(
        {"version": 1, "stream_id": "s1", "objects": [as_json(o) for o in BASE]}))
    lines = [{"version": 2, "stream_id": "s1", "changes": [["identity", "302", as_json(IdentityState(302, ("k8s:app=x",)))]]},
             {"version": 3, "stream_id": "s1", "changes": [["policy", "shop/db", None]]}]
    (state / "cluster-journal.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + '{"version": 4, "stream_id": "s1", "chan')


def test_an_earlier_releases_json_cache_is_imported_once(tmp_path: Path) -> None:
    legacy_cache(tmp_path)
    assert saved_pod_cidr(open_state(tmp_path).db, NODE) == IPv4Network("10.0.1.0/24")  # a peek moves nothing
    assert (tmp_path / "cluster-state.json").exists()
    a = Agent(tmp_path).start()
    assert (a.syncer.version, a.syncer.stream_id) == (3, "s1") and a.syncer.synced.is_set()
    assert a.allowed_into_db(302)  # the policy's deletion (version 3) came with it
    assert sorted(p.name for p in (tmp_path / LEGACY_BACKUP).iterdir()) == ["cluster-journal.jsonl", "cluster-state.json"]
    assert not (tmp_path / "cluster-state.json").exists()
    a.syncer.apply_update(update(4, [IdentityState(303, ("k8s:app=y",))]))
    b = Agent(tmp_path, a.maps).start()  # state.db alone from now on
    assert (b.syncer.version, b.syncer.objects) == (4, a.syncer.objects)
