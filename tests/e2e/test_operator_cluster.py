"""End to end without a datapath: API stand-in, two operator replicas, three simulated agents
on the state stream. Pods appear on every agent with their identity; a failover to the other
replica changes nothing an agent holds."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from kubernetes import client

from membrane.api.backoff import Backoff
from membrane.api.state_client import StateClient
from membrane.api.state_objects import EndpointState, Kind, NodeState, StateUpdate, apply_update
from membrane.operator.config import OperatorConfig
from membrane.operator.running import Operator
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.tls import node_material
from membrane_testkit.waiting import wait_for

NODES = ("n1", "n2", "n3")


class Agent:
    def __init__(self, node: str, port: int, api: KubeApiServer, **kwargs: object) -> None:
        self.node = node
        self.state: dict = {}
        self.lock = threading.Lock()
        material = node_material(api, node)
        self.client = StateClient(f"127.0.0.1:{port}", node, self.apply,
                                  backoff=Backoff(initial=0.05, maximum=0.5),
                                  tls=lambda: material, **kwargs)  # type: ignore[arg-type]
        self.client.start()

    def apply(self, update: StateUpdate) -> None:
        with self.lock:
            apply_update(self.state, update)

    def endpoints(self) -> dict[str, EndpointState]:
        with self.lock:
            return {k[1]: v for k, v in self.state.items() if k[0] is Kind.ENDPOINT}


def make_operator(api: KubeApiServer, name: str) -> Operator:
    return Operator(OperatorConfig(
        api_server=api.url, identity=name, http_addr="127.0.0.1:0", grpc_addr="127.0.0.1:0",
        install_crds=True, lease_duration_seconds=2.0, renew_deadline_seconds=1.5,
        retry_period_seconds=0.2, resync_seconds=0.2)).start()


@pytest.fixture
def api() -> Iterator[KubeApiServer]:
    with KubeApiServer(port=0) as server:
        yield server


def test_cluster_state_reaches_agents_and_survives_failover(api: KubeApiServer) -> None:
    api_client = api.api_client()
    core = client.CoreV1Api(api_client)
    first, second = make_operator(api, "op-1"), make_operator(api, "op-2")
    agents: list[Agent] = []
    try:
        for index, node in enumerate(NODES):
            core.create_node({"metadata": {"name": node}, "status": {
                "addresses": [{"type": "InternalIP", "address": f"192.0.2.{index + 1}"}]}})
        agents = [Agent(node, first.grpc_port, api) for node in NODES]
        for index in range(6):
            node = NODES[index % 3]
            name = f"web-{index}"
            core.create_namespaced_pod("default", {
                "metadata": {"name": name, "labels": {"app": "web" if index < 4 else "db"}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}})
            core.patch_namespaced_pod_status(name, "default", [
                {"op": "add", "path": "/status/podIP", "value": f"10.200.{index % 3}.{index + 10}"}])
        assert wait_for(lambda: all(len(a.endpoints()) == 6 for a in agents))
        endpoints = agents[0].endpoints()
        assert len({e.identity for e in endpoints.values()}) == 2
        nodes = {k[1]: v for k, v in agents[0].state.items() if k[0] is Kind.NODE}
        assert all(isinstance(n, NodeState) and n.pod_cidr for n in nodes.values())
        assert len({n.pod_cidr for n in nodes.values()}) == 3
        assert all(a.state == agents[0].state for a in agents)
        assert wait_for(lambda: (first.metrics.registry.get_sample_value(
            "membrane_operator_state_propagation_seconds_count") or 0) >= 1)

        before = dict(agents[0].state)
        # The replica the agents use dies without releasing anything; they move to the other.
        for agent in agents:
            agent.client.stop()
        first.stop(release=False)
        agents = [Agent(a.node, second.grpc_port, api, last_version=a.client.last_version,
                        stream_id=a.client.stream_id) for a in agents]
        assert wait_for(lambda: all(a.state == before for a in agents))
        assert wait_for(lambda: second.is_leader, timeout=10)
        core.delete_namespaced_pod("web-5", "default")
        assert wait_for(lambda: all(len(a.endpoints()) == 5 for a in agents))
    finally:
        for agent in agents:
            agent.client.stop()
        first.stop()
        second.stop()
        api_client.close()
