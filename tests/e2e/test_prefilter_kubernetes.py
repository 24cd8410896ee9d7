"""Kubernetes mode, end to end (root): a PacketFilter applied through the API reaches every node,
and its status says so, and its rules drop real packets on every node.

The API stand-in (validating custom resources against the CRD's schema as a real server does),
a real `membrane-operator` and two real agents. Checked: a new filter shows `2/2` at its
generation once both agents ack the stream version that carries it; with one agent down an
edit shows `1/2`, the generation every node enforces stays the old one and `nodesByGeneration`
tells them apart; the agent's return brings `2/2` at the new generation; an invalid edit is
refused by the API naming the field and the reason, and nothing else changes (the stored
object, the stream, the status); writing the status is no state change (no loop)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

import pytest
from kubernetes import client

from membrane_testkit.lab import netns
from membrane_testkit.lab.cluster import KubeLab
from membrane_testkit.lab.probes import NODE_UPLINK, world
from membrane_testkit.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, eBPF)")

GROUP, VERSION, PLURAL = "membrane.io", "v1alpha1", "packetfilters"
RULE = {"name": "udp-4242", "action": "Drop", "udp": {"destinationPort": {"min": 4242, "max": 4242}}}


def after_passes(lab: KubeLab, passes: int) -> None:
    """Wait until the operator's controller has run `passes` more passes (events or resync)."""
    name = "membrane_operator_controller_pass_seconds_count"
    start = lab.operator_metric(name)
    wait_for(lambda: lab.operator_metric(name) >= start + passes, timeout=60,
             message=f"{passes} more operator controller passes")


def test_a_filter_applied_through_the_api_is_enforced_on_both_nodes(lab: KubeLab) -> None:
    custom = client.CustomObjectsApi(lab.api_client)
    node1, node2 = lab.add_node(), lab.add_node()
    assert node1 and node2

    def status() -> dict[str, Any]:
        return dict(custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "cve").get("status") or {})

    custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "PacketFilter", "metadata": {"name": "cve"},
        "spec": {"rules": [RULE]}})
    assert wait_for(lambda: status().get("enforced") == "2/2", interval=0.01), status()
    got = status()
    assert got["enforcedGeneration"] == 1 and got["nodesByGeneration"] == [{"generation": 1, "nodes": 2}]
    assert got["conditions"][0]["status"] == "True"

    # No loop: the status writes are no state change for the agents (checked after two more
    # controller passes, whatever the machine's speed: a fixed sleep may see none).
    version = lab.operator_metric("membrane_operator_state_version")
    after_passes(lab, 2)
    assert lab.operator_metric("membrane_operator_state_version") == version

    # node2's agent is down: generation 2 reaches node1 only.
    node2.stop_agent()
    custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "cve", {"spec": {
        "sanityChecks": "Drop", "rules": [RULE, {**RULE, "name": "udp-4343", "udp": {
            "destinationPort": {"min": 4343, "max": 4343}}}]}})
    assert wait_for(lambda: status().get("nodesByGeneration") == [
        {"generation": 2, "nodes": 1}, {"generation": 1, "nodes": 1}]), status()
    assert status()["enforced"] == "1/2" and status()["enforcedGeneration"] == 1

    # An invalid edit: refused by the API with the field and the reason; nothing else changes.
    version = lab.operator_metric("membrane_operator_state_version")
    with pytest.raises(client.ApiException) as caught:
        custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, "cve", {"spec": {
            "rules": [{**RULE, "udp": {"destinationPort": {"min": 4242, "max": 70000}}}]}})
    assert caught.value.status == 422
    assert "spec.rules[0].udp.destinationPort.max: should be less than or equal to 65535" in \
        json.loads(caught.value.body)["message"]
    stored = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "cve")
    assert stored["metadata"]["generation"] == 2 and len(stored["spec"]["rules"]) == 2
    after_passes(lab, 2)
    assert lab.operator_metric("membrane_operator_state_version") == version

    # node2 is back: both enforce generation 2.
    node2.start_agent()
    assert wait_for(lambda: status().get("enforced") == "2/2" and status().get("enforcedGeneration") == 2), status()
    assert status()["nodesByGeneration"] == [{"generation": 2, "nodes": 2}]
    log = lab.operator_log.read_text()
    assert "status of PacketFilter" not in log, log[-2000:]


SEND = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    for port in sys.argv[3:]:
        sock.sendto(b"membrane", (sys.argv[1], int(port)))
"""


def test_a_filter_applied_through_the_api_drops_real_packets_on_both_nodes(lab: KubeLab) -> None:
    """Each node's XDP prefilter on its uplink (--devices): datagrams from outside to the port
    the filter names are dropped before the stack on both nodes, other ports pass, and each
    node counts the drops under the rule's name (membranectl prefilter stats)."""
    custom = client.CustomObjectsApi(lab.api_client)
    nodes = [lab.add_node(start=False, extra_args=["--devices", "uplink"]) for _ in range(2)]
    with ExitStack() as stack:
        worlds = {node.name: stack.enter_context(world(node)) for node in nodes}
        for node in nodes:
            node.start_agent()
        custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "PacketFilter", "metadata": {"name": "cve"},
            "spec": {"rules": [RULE]}})

        def status() -> dict[str, Any]:
            return dict(custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, "cve").get("status") or {})

        assert wait_for(lambda: status().get("enforced") == "2/2" and status().get("enforcedGeneration") == 1), status()
        for node in nodes:
            listed = node.api("prefilter.list")
            assert [(r["name"], r["action"], r["matches"]) for r in listed] == [("cve.udp-4242", "drop", "udp dport 4242")]
            receiver = netns.popen_in(node.netns, [sys.executable, "-m", "membrane_testkit.lab.flooding", "count",
                                                   NODE_UPLINK, "4242,7002"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
                netns.exec_in(worlds[node.name], [sys.executable, "-c", SEND, NODE_UPLINK, "50", "4242", "7002"])
                time.sleep(0.5)
                out, _ = receiver.communicate("", timeout=30)
            finally:
                if receiver.poll() is None:
                    receiver.kill()
                    receiver.wait()
            assert {int(k): v for k, v in json.loads(out).items()} == {4242: 0, 7002: 50}, node.name
            stats = {r["name"]: r for r in node.api("prefilter.stats")}
            assert stats["cve.udp-4242"]["dropped_packets"] == 50, stats
