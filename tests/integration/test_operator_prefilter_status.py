"""PacketFilter and CIDRDenyList through a real operator: streamed to every subscribed agent
as records the agent turns into the datapath's rules, and `.status` says how many nodes enforce
which generation (from the agents' acks) and whether the spec was accepted.

Agents here are state-stream clients that convert every filter record with the agent's own
conversion (membrane/prefilter_converting.py) and ack what they applied, as the real agent
does once its maps hold it (the two-node test with real agents and real packets is
tests/e2e/test_prefilter_kubernetes.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from membrane.api.backoff import Backoff
from membrane.api.state_client import StateClient
from membrane.api.state_objects import (
    CIDRDenyChunkState,
    CIDRDenyListState,
    Kind,
    PacketFilterState,
    StateUpdate,
    apply_update,
)
from membrane.operator.config import OperatorConfig
from membrane.operator.running import Operator
from membrane.prefilter_converting import deny_lists, desired_rules
from membrane.prefilter_rules import DenyList, Rule
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.waiting import wait_for

GROUP, VERSION = "membrane.io", "v1alpha1"


class Agent:
    """A node's stream client: applies filter records through the real conversion, acks them."""

    def __init__(self, port: int, name: str) -> None:
        self.name, self.port = name, port
        self.state: dict[Any, Any] = {}
        self.rules: list[Rule] = []
        self.lists: list[DenyList] = []
        self.lock = threading.Lock()
        self.client: StateClient | None = None
        self.start()

    def start(self) -> None:
        self.client = StateClient(f"127.0.0.1:{self.port}", self.name, self.apply,
                                  backoff=Backoff(initial=0.05, maximum=0.2))
        self.client.start()

    def stop(self) -> None:
        if self.client is not None:
            self.client.stop()
            self.client = None

    def apply(self, update: StateUpdate) -> int:
        with self.lock:
            apply_update(self.state, update)
            self.rules = desired_rules(o for o in self.state.values() if isinstance(o, PacketFilterState))
            self.lists = deny_lists(o for o in self.state.values() if isinstance(o, (CIDRDenyListState, CIDRDenyChunkState)))
        return update.version

    def rule_names(self) -> list[str]:
        with self.lock:
            return [r.name for r in self.rules]


def after_passes(operator: Operator, passes: int) -> None:
    """Wait until the operator's controller has run `passes` more passes (a fixed sleep may see none)."""
    def count() -> float:
        return operator.metrics.registry.get_sample_value("membrane_operator_controller_pass_seconds_count") or 0.0
    start = count()
    wait_for(lambda: count() >= start + passes, timeout=60, message=f"{passes} more controller passes")


@pytest.fixture
def cluster() -> Iterator[tuple[KubeApiServer, Operator, client.CustomObjectsApi]]:
    with KubeApiServer(port=0) as api:
        apis = api.api_client()
        operator = Operator(OperatorConfig(
            api_server=api.url, identity="op", http_addr="127.0.0.1:0", grpc_addr="127.0.0.1:0",
            install_crds=True, leader_election=False, resync_seconds=0.1, insecure_plaintext=True)).start()
        core = client.CoreV1Api(apis)
        for node in ("n1", "n2"):
            core.create_node({"metadata": {"name": node}})
        try:
            assert wait_for(operator.ready)
            yield api, operator, client.CustomObjectsApi(apis)
        finally:
            operator.stop()
            apis.close()


def packet_filter(rules: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PacketFilter", "metadata": {"name": "cve"},
            "spec": {"rules": rules, **spec}}


DROP_X = {"name": "x", "action": "Drop", "udp": {"destinationPort": {"min": 4242, "max": 4242}}}
COUNT_Y = {"name": "y", "action": "Count", "ipv4": {"ttl": {"max": 1}}}


def test_status_shows_which_nodes_enforce_which_generation(cluster: tuple[KubeApiServer, Operator, Any]) -> None:
    api, operator, custom = cluster
    agents = {name: Agent(operator.grpc_port, name) for name in ("n1", "n2")}
    try:
        def status() -> dict[str, Any]:
            obj = custom.get_cluster_custom_object(GROUP, VERSION, "packetfilters", "cve")
            return dict(obj.get("status") or {})

        custom.create_cluster_custom_object(GROUP, VERSION, "packetfilters", packet_filter([DROP_X]))
        assert wait_for(lambda: status().get("enforced") == "2/2"), status()
        got = status()
        assert got["enforcedGeneration"] == 1 and got["observedGeneration"] == 1
        assert got["nodesByGeneration"] == [{"generation": 1, "nodes": 2}]
        (accepted,) = got["conditions"]
        assert (accepted["type"], accepted["status"], accepted["reason"]) == ("Accepted", "True", "Valid")
        assert all(a.rule_names() == ["cve.x"] for a in agents.values())

        # One node's agent is down: generation 2 reaches n1 only; every node enforces generation 1.
        agents["n2"].stop()
        custom.patch_cluster_custom_object(GROUP, VERSION, "packetfilters", "cve",
                                           {"spec": {"rules": [DROP_X, COUNT_Y], "sanityChecks": "Count"}})
        assert wait_for(lambda: status().get("observedGeneration") == 2), status()
        assert wait_for(lambda: status().get("nodesByGeneration") == [{"generation": 2, "nodes": 1},
                                                                      {"generation": 1, "nodes": 1}]), status()
        assert status()["enforced"] == "1/2" and status()["enforcedGeneration"] == 1
        assert agents["n1"].rule_names()[-2:] == ["cve.x", "cve.y"]
        assert agents["n1"].rule_names()[0].startswith("sanity.")

        # Back: both at generation 2.
        agents["n2"].start()
        assert wait_for(lambda: status().get("enforced") == "2/2" and status().get("enforcedGeneration") == 2), status()
        assert agents["n2"].rule_names() == agents["n1"].rule_names()

        # The status writes are no state change for the agents (no loop).
        version = operator.state.version
        after_passes(operator, 3)  # status writes and the passes after them, however slow the machine
        assert operator.state.version == version

        # A CIDR deny list: the same status.
        custom.create_cluster_custom_object(GROUP, VERSION, "cidrdenylists", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "CIDRDenyList", "metadata": {"name": "bad"},
            "spec": {"cidrs": ["203.0.113.0/24", "198.51.100.7"]}})
        assert wait_for(lambda: (custom.get_cluster_custom_object(GROUP, VERSION, "cidrdenylists", "bad")
                                 .get("status") or {}).get("enforced") == "2/2")
        assert all(a.lists and a.lists[0].name == "bad" and len(a.lists[0].prefixes) == 2 for a in agents.values())
        writes = [r for r in api.requests if r.method == "PATCH" and "/status" in r.path]
        assert writes and all(r.code < 400 for r in writes), [(r.path, r.code) for r in writes]
    finally:
        for agent in agents.values():
            agent.stop()


def test_a_spec_only_the_operator_can_refuse_is_reported_and_streamed_to_no_node(
        cluster: tuple[KubeApiServer, Operator, Any]) -> None:
    """Host bits set in a CIDR pass any Kubernetes 1.26 schema: the operator names the field in
    the Accepted condition and leaves the object out; every other filter stays as it was."""
    _api, operator, custom = cluster
    agent = Agent(operator.grpc_port, "n1")
    try:
        other = packet_filter([COUNT_Y])
        other["metadata"]["name"] = "other"
        custom.create_cluster_custom_object(GROUP, VERSION, "packetfilters", other)
        custom.create_cluster_custom_object(GROUP, VERSION, "packetfilters",
                                            packet_filter([{**DROP_X, "source": "10.1.2.3/8"}]))

        def condition() -> dict[str, Any]:
            obj = custom.get_cluster_custom_object(GROUP, VERSION, "packetfilters", "cve")
            return next(iter((obj.get("status") or {}).get("conditions") or []), {})

        assert wait_for(lambda: condition().get("status") == "False"), condition()
        assert condition()["reason"] == "Invalid"
        assert condition()["message"].startswith("spec.rules[0].source: Invalid value: '10.1.2.3/8': host bits set")
        assert (Kind.PACKET_FILTER, "cve") not in operator.state.objects()
        def refused() -> float | None:
            return operator.metrics.registry.get_sample_value("membrane_operator_invalid_prefilter_objects",
                                                              {"kind": "PacketFilter"})

        assert wait_for(lambda: refused() == 1)
        assert wait_for(lambda: agent.rule_names() == ["other.y"])
        obj = custom.get_cluster_custom_object(GROUP, VERSION, "packetfilters", "cve")
        assert obj["status"]["enforced"] == "0/2" and obj["status"]["nodesByGeneration"] == []

        # Fixed: accepted, streamed, enforced.
        custom.patch_cluster_custom_object(GROUP, VERSION, "packetfilters", "cve",
                                           {"spec": {"rules": [{**DROP_X, "source": "10.0.0.0/8"}]}})
        assert wait_for(lambda: condition().get("status") == "True"), condition()
        assert wait_for(lambda: agent.rule_names() == ["cve.x", "other.y"])
        assert wait_for(lambda: refused() == 0)
    finally:
        agent.stop()


def test_the_api_refuses_an_invalid_rule_naming_the_field_and_nothing_changes(
        cluster: tuple[KubeApiServer, Operator, Any]) -> None:
    """The CRD's schema (with its CEL rules) at the API: a bad edit is refused with the field and
    the reason, the stored filter and what every node enforces stay as they were."""
    _api, operator, custom = cluster
    agent = Agent(operator.grpc_port, "n1")
    try:
        custom.create_cluster_custom_object(GROUP, VERSION, "packetfilters", packet_filter([DROP_X]))
        assert wait_for(lambda: agent.rule_names() == ["cve.x"])
        version = operator.state.version
        for bad, message in (
                ({**DROP_X, "action": "Reject"},
                 'spec.rules[0].action: Unsupported value: "Reject": supported values: "Drop", "Count", "RateLimit"'),
                ({**DROP_X, "action": "RateLimit"},
                 "spec.rules[0]: rateLimit is required with action RateLimit and allowed only with it"),
                ({**DROP_X, "payload": {"offset": 0, "value": "abc"}},
                 'spec.rules[0].payload.value: Invalid value: "abc": must be bytes in hex digits')):
            with pytest.raises(client.ApiException) as caught:
                custom.patch_cluster_custom_object(GROUP, VERSION, "packetfilters", "cve", {"spec": {"rules": [bad]}})
            assert caught.value.status == 422
            assert f'PacketFilter.membrane.io "cve" is invalid: {message}' in json.loads(caught.value.body)["message"]
        stored = custom.get_cluster_custom_object(GROUP, VERSION, "packetfilters", "cve")
        assert stored["spec"]["rules"] == [DROP_X] and stored["metadata"]["generation"] == 1
        after_passes(operator, 2)
        assert operator.state.version == version and agent.rule_names() == ["cve.x"]
        # Strict field validation (kubectl apply --validate=strict) refuses an unknown field.
        with pytest.raises(client.ApiException) as caught:
            custom.api_client.call_api(
                "/apis/membrane.io/v1alpha1/packetfilters", "POST", body={**packet_filter([{**DROP_X, "actoin": "Drop"}]),
                                                                          "metadata": {"name": "typo"}},
                query_params=[("fieldValidation", "Strict")], header_params={"Content-Type": "application/json"},
                _return_http_data_only=True, _preload_content=False)
        assert caught.value.status == 400 and 'unknown field \\"spec.rules[0].actoin\\"' in caught.value.body.decode()
    finally:
        agent.stop()
