"""Two operator replicas behind one Service address: only the leader serves the state stream,
so the per-policy `membrane.io/enforced: "N/M"` (written by the leader from the acks it
receives) counts every node whatever replica an agent's connection lands on (issue 9.3).

The API stand-in, two real `membrane-operator` processes (Lease election), a `ServiceProxy`
that sends each new connection to the next replica in turn, the standby first (as kube-proxy
spreads connections), and simulated agents: the real `StateClient` with node certificates
(mutual TLS through the proxy). The chart's Service would select the leader's pod by the
label the leader sets (checked too); the proxy does not, so the refusal path is what is
exercised. Checked: agents that land on the standby are refused and find
the leader, and the annotation reaches 3/3; the leader is killed (SIGKILL, lease not
released): the standby takes the lease, the agents reconnect to it, and an edit of the policy
(a new generation) reaches 3/3 at that generation.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from membrane.api.backoff import Backoff
from membrane.api.state_client import StateClient
from membrane.api.state_objects import Kind, StateUpdate, apply_update
from membrane_testkit import operator_process as membrane_operator
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.service_proxy import ServiceProxy
from membrane_testkit.tls import node_material
from membrane_testkit.waiting import wait_for

NODES = ("n1", "n2", "n3")
ENFORCED, GENERATION = "membrane.io/enforced", "membrane.io/enforced-generation"


class OperatorProcess(membrane_operator.OperatorProcess):
    def __init__(self, api: KubeApiServer, name: str, log_dir: Path) -> None:
        super().__init__(api, name, log_dir, "10.221.0.0/16",
                         extra_env={"MEMBRANE_LEADER_LABEL": "true", "MEMBRANE_POD_NAMESPACE": "kube-system"})


class Agent:
    """A node's end of the stream: applies every update and acks it (the real client)."""

    def __init__(self, node: str, target: str, api: KubeApiServer) -> None:
        self.node, self.state, self.lock = node, {}, threading.Lock()
        material = node_material(api, node)
        self.client = StateClient(target, node, self.apply,
                                  backoff=Backoff(initial=0.05, maximum=0.5), tls=lambda: material)
        self.client.start()

    def apply(self, update: StateUpdate) -> None:
        with self.lock:
            apply_update(self.state, update)

    def policy(self, key: str) -> object:
        with self.lock:
            return self.state.get((Kind.POLICY, key))


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(port=0) as server:
        yield server


def lease_holder(api_client: client.ApiClient) -> str:
    try:
        lease = client.CoordinationV1Api(api_client).read_namespaced_lease(
            "membrane-operator", "kube-system")
    except client.ApiException as exc:
        if exc.status == 404:
            return ""
        raise
    return lease.spec.holder_identity or ""


def leader_labelled(core: client.CoreV1Api) -> set[str]:
    """The operator pods labelled as leader (what the chart's Service selects)."""
    return {p.metadata.name for p in core.list_namespaced_pod("kube-system").items
            if (p.metadata.labels or {}).get("membrane.io/operator-leader") == "true"}


def db_policy(port: int) -> dict:
    return {"metadata": {"name": "db", "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                  "ports": [{"port": port, "protocol": "TCP"}]}]}}


def test_enforced_counts_every_node_whatever_replica_agents_land_on(
        api: KubeApiServer, tmp_path: Path) -> None:
    api_client = api.api_client()
    core, net = client.CoreV1Api(api_client), client.NetworkingV1Api(api_client)
    core.create_namespace({"metadata": {"name": "shop"}})
    for index, node in enumerate(NODES):
        core.create_node({"metadata": {"name": node}, "status": {
            "addresses": [{"type": "InternalIP", "address": f"192.0.2.{index + 1}"}]}})
    for name in ("op-a", "op-b"):  # the replicas' own pods (host network, as the chart runs them)
        core.create_namespaced_pod("kube-system", {"metadata": {"name": name}, "spec": {
            "hostNetwork": True, "containers": [{"name": "c", "image": "i"}]}})
    procs: list[OperatorProcess] = []
    agents: list[Agent] = []
    proxy: ServiceProxy | None = None
    try:
        leader = OperatorProcess(api, "op-a", tmp_path)
        procs.append(leader)
        leader.wait_ready()
        assert wait_for(lambda: lease_holder(api_client) == "op-a")
        standby = OperatorProcess(api, "op-b", tmp_path)
        procs.append(standby)
        standby.wait_ready()
        # The Service: connections alternate between the replicas, the standby first.
        proxy = ServiceProxy([("127.0.0.1", leader.grpc), ("127.0.0.1", standby.grpc)], first=1)
        agents = [Agent(node, proxy.address, api) for node in NODES]

        def annotations() -> dict[str, str]:
            obj = net.read_namespaced_network_policy("db", "shop")
            return {k: v for k, v in (obj.metadata.annotations or {}).items()
                    if k in (ENFORCED, GENERATION)}

        net.create_namespaced_network_policy("shop", db_policy(80))
        assert wait_for(lambda: annotations() == {ENFORCED: "3/3", GENERATION: "1"}, timeout=30), \
            (annotations(), proxy.connections)
        # Agents did land on the standby, and it sent them on.
        assert proxy.connections[1] >= 2, proxy.connections
        assert sum(a.client.standby_refusals for a in agents) >= 2
        assert standby.metric('membrane_operator_state_stream_refused_total{reason="not_leader"}') >= 2
        assert standby.metric("membrane_operator_state_subscribers") == 0
        assert leader.metric("membrane_operator_state_subscribers") == 3
        assert wait_for(lambda: leader_labelled(core) == {"op-a"})  # the standby never labels itself
        first_stream = {a.client.stream_id for a in agents}
        assert len(first_stream) == 1

        # The leader dies without releasing the lease: the standby takes over, the agents
        # reconnect to it (refused until it leads), and a new generation is counted 3/3.
        leader.stop(signal.SIGKILL)
        assert wait_for(lambda: lease_holder(api_client) == "op-b", timeout=15)
        # The new leader labels its pod (a dead leader's pod leaves the Service with its pod).
        assert wait_for(lambda: "op-b" in leader_labelled(core))
        assert wait_for(lambda: standby.metric("membrane_operator_state_subscribers") == 3, timeout=15)
        net.patch_namespaced_network_policy("db", "shop", {"spec": db_policy(81)["spec"]})
        assert wait_for(lambda: annotations() == {ENFORCED: "3/3", GENERATION: "2"}, timeout=30), \
            annotations()
        streams = {a.client.stream_id for a in agents}
        assert len(streams) == 1 and streams != first_stream  # all on the new leader's stream
        assert all(a.policy("shop/db") is not None for a in agents)
        for proc in procs:
            assert "Traceback" not in proc.log_path.read_text(), proc.log_path.read_text()[-3000:]
    finally:
        for agent in agents:
            agent.client.stop()
        if proxy is not None:
            proxy.close()
        for proc in procs:
            proc.stop()
        api_client.close()
