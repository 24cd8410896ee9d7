"""An ADD that fails part-way leaves nothing behind: no veth (either side), no IFB, no
address held, no endpoint record or map entry. Failpoints (MEMBRANE_FAILPOINTS=1 in the
agent's environment, armed per request through CNI_ARGS) break each step in turn, as an error
and as the agent dying mid-ADD (the plugin then answers code 5 and the restarted agent cleans
up). Also: a pod interface name already taken, and a host link an earlier ADD left."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.endpoints import host_ifname_for
from agent.failpoints import ADD_STEPS
from agent.state_db import read_endpoint_rows
from membrane import cni_types as c
from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode

BANDWIDTH = {"ingressRate": 50_000_000, "ingressBurst": 800_000, "egressRate": 50_000_000, "egressBurst": 800_000}
ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"


@pytest.fixture
def fp_node(make_node: Any, monkeypatch: pytest.MonkeyPatch) -> LabNode:
    monkeypatch.setenv("MEMBRANE_FAILPOINTS", "1")  # inherited by the agent only
    return make_node()  # type: ignore[no-any-return]


def conf(node: LabNode) -> dict[str, Any]:
    return node.net_conf("1.0.0", runtimeConfig={"bandwidth": BANDWIDTH})  # every step, the IFB too


def links(ns: str) -> list[str]:
    return [link["ifname"] for link in json.loads(netns.exec_in(ns, ["ip", "-j", "link", "show"]).stdout)]


def assert_nothing_left(node: LabNode, pod_ns: str, step: str, pod_links: tuple[str, ...] = ("lo",)) -> None:
    assert node.api("endpoint.list") == [], step
    assert node.api("status")["endpoints"]["ipam"]["allocated"] == 0, step
    assert node.api("bpf.endpoints") in ([], {}), step
    assert not [n for n in links(node.netns) if n.startswith("mb")], (step, links(node.netns))
    assert sorted(links(pod_ns)) == sorted(pod_links), (step, links(pod_ns))
    assert read_endpoint_rows(node.workdir / "state") == [], step  # no record, so no address held


def test_an_add_failing_at_any_step_is_rolled_back(fp_node: LabNode) -> None:
    node = fp_node
    pod_ns = f"{node.netns}-p"
    path = str(netns.create(pod_ns))
    for step in ADD_STEPS:
        code, err, raw = node.cni("ADD", "cid", path, args=f"{ARGS};MEMBRANE_FAILPOINT={step}", conf=conf(node))
        assert code == 1 and err is not None and err["code"] == c.INTERNAL_ERROR, (step, raw)
        assert f"failpoint {step}" in err["msg"], (step, raw)
        assert_nothing_left(node, pod_ns, step)
        assert node.cni("DEL", "cid", path, args=ARGS, conf=conf(node))[0] == 0  # kubelet's DEL after a failed ADD
    # Nothing in the way: the same sandbox is wired for real now, and works.
    code, _res, raw = node.cni("ADD", "cid", path, args=ARGS, conf=conf(node))
    assert code == 0, raw
    assert sorted(links(pod_ns)) == ["eth0", "lo", "mb-ifb-eth0"]
    assert node.api("status")["endpoints"]["ipam"]["allocated"] == 1
    assert node.cni("DEL", "cid", path, args=ARGS, conf=conf(node))[0] == 0
    assert_nothing_left(node, pod_ns, "after a real ADD and DEL")


@pytest.mark.parametrize("step", ["add.after-veth", "add.after-pod-side", "add.after-map", "add.after-attach",
                                  "add.after-save"])
def test_the_agent_dying_mid_add_is_code_5_and_restart_cleans_up(fp_node: LabNode, step: str) -> None:
    node = fp_node
    pod_ns = f"{node.netns}-p"
    path = str(netns.create(pod_ns))
    code, err, raw = node.cni("ADD", "cid", path, args=f"{ARGS};MEMBRANE_FAILPOINT={step}:exit", conf=conf(node))
    assert code == 1 and err is not None and err["code"] == c.IO_FAILURE, raw
    assert "lost the connection to the membrane agent" in err["msg"]
    assert node.process is not None and node.process.wait(10) == 70
    node.process = None
    node.start_agent()
    # Consistent whatever the step: every stored endpoint holds its address, and every address
    # held belongs to a stored endpoint.
    rows = read_endpoint_rows(node.workdir / "state")
    listed = node.api("endpoint.list")
    assert sorted((f"{e['container_id']}/{e['ifname']}", e["ip"]) for e in listed) == rows, (step, rows, listed)
    assert node.api("status")["endpoints"]["ipam"]["allocated"] == len(rows), step
    if step == "add.after-save":  # the pod was complete when the agent died: restored whole
        assert [e["container_id"] for e in node.api("endpoint.list")] == ["cid"]
    else:  # restore removed the orphan veth and freed the address
        assert_nothing_left(node, pod_ns, step)
    # The runtime calls DEL after a failed ADD; then nothing is left in any case.
    assert node.cni("DEL", "cid", path, args=ARGS, conf=conf(node))[0] == 0
    assert_nothing_left(node, pod_ns, step)


def test_an_interface_name_taken_in_the_pod_is_refused_and_nothing_is_left(node: LabNode) -> None:
    pod_ns = f"{node.netns}-p"
    path = str(netns.create(pod_ns))
    netns.exec_in(pod_ns, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0"])
    code, err, raw = node.cni("ADD", "cid", path, args=ARGS)
    assert code == 1 and err is not None and err["code"] == c.INVALID_ENVIRONMENT, raw
    assert "CNI_IFNAME eth0 is taken" in err["msg"] and path in err["msg"]
    assert_nothing_left(node, pod_ns, "ifname taken", pod_links=("eth0", "lo", "other0"))
    # another name in the same sandbox is fine
    code, res, raw = node.cni("ADD", "cid", path, ifname="net1", args=ARGS)
    assert code == 0 and res is not None, raw
    assert res["interfaces"][1]["name"] == "net1"


def test_a_host_link_left_by_an_earlier_add_is_replaced(node: LabNode) -> None:
    pod_ns = f"{node.netns}-p"
    path = str(netns.create(pod_ns))
    leftover = host_ifname_for("cid", "eth0")
    netns.exec_in(node.netns, ["ip", "link", "add", leftover, "type", "veth", "peer", "name", "stale0"])
    code, res, raw = node.cni("ADD", "cid", path, args=ARGS)
    assert code == 0 and res is not None, raw
    kind = json.loads(netns.exec_in(node.netns, ["ip", "-j", "-d", "link", "show", leftover]).stdout)[0]
    assert kind["linkinfo"]["info_kind"] == "veth"
    assert "orphan host link removed" in node.log_path.read_text()
    assert "stale0" not in links(node.netns)
