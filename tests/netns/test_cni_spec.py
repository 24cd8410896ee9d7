"""CNI specification suite against a real agent: every command, every error code we claim,
idempotent DEL, CHECK catching a broken pod, chained prevResult, 0.3.1/0.4.0/1.0.0/1.1.0."""

from __future__ import annotations

import json

import pytest

from membrane import cni_types as c
from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode


def pod_ns(node: LabNode, name: str) -> str:
    return str(netns.create(f"{node.netns}-{name}"))


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_result_is_spec_shaped_per_version(node: LabNode, version: str) -> None:
    path = pod_ns(node, "p")
    code, res, raw = node.cni("ADD", "cid1", path, conf=node.net_conf(version))
    assert code == 0, raw
    assert res is not None and res["cniVersion"] == version
    host, pod = res["interfaces"]
    assert pod["name"] == "eth0" and pod["sandbox"] == path and len(pod["mac"]) == 17
    assert host["name"].startswith("mb") and "sandbox" not in host
    (ip,) = res["ips"]
    assert ip["interface"] == 1 and ip["gateway"] == "169.254.1.1" and ip["address"].endswith("/32")
    assert ("version" in ip) == (version < "1.0.0")
    assert {"dst": "0.0.0.0/0", "gw": "169.254.1.1"} in res["routes"]
    # What the result claims is what the pod has.
    shown = netns.exec_in(f"{node.netns}-p", ["ip", "-j", "addr", "show", "eth0"]).stdout
    assert ip["address"].split("/")[0] in shown and pod["mac"] in shown
    assert node.cni("DEL", "cid1", path, conf=node.net_conf(version))[0] == 0


def test_version_command(node: LabNode) -> None:
    code, res, _ = node.cni("VERSION", stdin=b"")
    assert code == 0 and res is not None and set(c.SUPPORTED_VERSIONS) <= set(res["supportedVersions"])


def test_add_twice_returns_the_same_endpoint(node: LabNode) -> None:
    path = pod_ns(node, "p")
    _, first, _ = node.cni("ADD", "cid1", path)
    _, second, _ = node.cni("ADD", "cid1", path)
    assert first == second
    assert len(node.api("endpoint.list")) == 1


def test_del_is_idempotent_everywhere(node: LabNode) -> None:
    path = pod_ns(node, "p")
    assert node.cni("ADD", "cid1", path)[0] == 0
    assert node.cni("DEL", "cid1", path)[0] == 0
    assert node.cni("DEL", "cid1", path)[0] == 0                       # twice
    assert node.cni("DEL", "never-added", path)[0] == 0                # unknown container
    assert node.cni("ADD", "cid2", path)[0] == 0
    netns.delete(f"{node.netns}-p")
    assert node.cni("DEL", "cid2", path)[0] == 0                       # netns already gone
    assert node.cni("DEL", "cid2", "")[0] == 0                         # no netns given at all
    assert node.api("endpoint.list") == []
    assert node.api("status")["endpoints"]["ipam"]["allocated"] == 0
    links = netns.exec_in(node.netns, ["ip", "-o", "link"]).stdout
    assert " mb" not in links


def test_del_after_agent_restart(node: LabNode) -> None:
    path = pod_ns(node, "p")
    assert node.cni("ADD", "cid1", path)[0] == 0
    node.stop_agent()
    node.start_agent()
    assert node.cni("DEL", "cid1", path)[0] == 0
    assert node.api("endpoint.list") == []


@pytest.mark.parametrize("breakage", ["address", "program", "host-link"])
def test_check_detects_a_broken_pod(node: LabNode, breakage: str) -> None:
    path = pod_ns(node, "p")
    code, res, _ = node.cni("ADD", "cid1", path)
    conf = node.net_conf("1.0.0", prevResult=res)
    assert node.cni("CHECK", "cid1", path, conf=conf)[0] == 0
    host = res["interfaces"][0]["name"]
    if breakage == "address":
        netns.exec_in(f"{node.netns}-p", ["ip", "addr", "flush", "dev", "eth0"])
    elif breakage == "program":
        netns.exec_in(node.netns, ["tc", "filter", "del", "dev", host, "ingress"])
    else:
        netns.exec_in(node.netns, ["ip", "link", "del", host])
    code, err, _ = node.cni("CHECK", "cid1", path, conf=conf)
    assert code != 0 and err is not None and err["code"] == c.INTERFACE_MISMATCH, err
    assert err["msg"] and err["details"]


def test_check_unknown_container_and_wrong_prev_result(node: LabNode) -> None:
    path = pod_ns(node, "p")
    code, err, _ = node.cni("CHECK", "ghost", path)
    assert code != 0 and err["code"] == c.UNKNOWN_CONTAINER
    _, res, _ = node.cni("ADD", "cid1", path)
    bogus = json.loads(json.dumps(res))
    bogus["ips"][0]["address"] = "10.99.99.99/32"
    code, err, _ = node.cni("CHECK", "cid1", path, conf=node.net_conf("1.0.0", prevResult=bogus))
    assert err["code"] == c.INTERFACE_MISMATCH and "prevResult" in err["details"]


def test_chained_prev_result_is_kept(node: LabNode) -> None:
    path = pod_ns(node, "p")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "dummy0"}],
            "ips": [{"address": "192.0.2.10/24", "interface": 0}], "dns": {"nameservers": ["10.96.0.10"]}}
    code, res, raw = node.cni("ADD", "cid1", path, conf=node.net_conf("1.0.0", prevResult=prev))
    assert code == 0, raw
    assert res["interfaces"][0] == {"name": "dummy0"} and res["ips"][0]["address"] == "192.0.2.10/24"
    assert res["ips"][1]["interface"] == 2 and res["dns"] == prev["dns"]


def test_error_codes_from_the_real_plugin(node: LabNode) -> None:
    path = pod_ns(node, "p")
    regular = node.workdir / "not-a-netns"
    regular.write_text("")
    cases = [
        (dict(command="ADD", container_id="cid", pod_netns="/var/run/netns/does-not-exist"), c.INVALID_ENVIRONMENT),
        (dict(command="ADD", container_id="cid", pod_netns=str(regular)), c.INVALID_ENVIRONMENT),
        (dict(command="ADD", container_id="cid", pod_netns=str(node.workdir)), c.INVALID_ENVIRONMENT),
        (dict(command="ADD", container_id="cid", pod_netns=f"/var/run/netns/{node.netns}"), c.INVALID_ENVIRONMENT),
        (dict(command="ADD", container_id="bad/id", pod_netns=path), c.INVALID_ENVIRONMENT),
        (dict(command="ADD", container_id="cid", pod_netns=path, ifname="way-too-long-ifname"), c.INVALID_ENVIRONMENT),
        (dict(command="ADD", container_id="cid", pod_netns=path, stdin=b"nope"), c.DECODE_FAILURE),
        (dict(command="ADD", container_id="cid", pod_netns=path, conf={"cniVersion": "1.0.0", "name": "x"}),
         c.INVALID_CONFIG),
        (dict(command="ADD", container_id="cid", pod_netns=path, conf=node.net_conf("0.1.0")),
         c.INCOMPATIBLE_VERSION),
        (dict(command="ADD", container_id="cid", pod_netns=path,
              conf={**node.net_conf(), "agentSocket": "/run/none.sock"}), c.TRY_AGAIN_LATER),
    ]
    for kwargs, expected in cases:
        code, err, raw = node.cni(**kwargs)  # type: ignore[arg-type]
        assert code != 0 and err is not None and err["code"] == expected, (kwargs, raw)
        assert isinstance(err["msg"], str) and err["msg"]
        if "pod_netns" in kwargs and err["code"] == c.INVALID_ENVIRONMENT and "CNI_NETNS" in err["msg"]:
            assert kwargs["pod_netns"] in err["msg"]
    messages = {kwargs.get("pod_netns"): node.cni(**kwargs)[1]["msg"] for kwargs, _ in cases[1:4]}  # type: ignore[arg-type,index]
    assert "is not a network namespace (a regular file)" in messages[str(regular)]
    assert "is not a network namespace (a directory)" in messages[str(node.workdir)]
    assert "the node's own network namespace" in messages[f"/var/run/netns/{node.netns}"]
    assert node.api("endpoint.list") == [] and node.api("status")["endpoints"]["ipam"]["allocated"] == 0


def test_status_and_gc(node: LabNode) -> None:
    conf = node.net_conf("1.1.0")
    assert node.cni("STATUS", conf=conf)[0] == 0
    keep, drop = pod_ns(node, "keep"), pod_ns(node, "drop")
    assert node.cni("ADD", "keep", keep, conf=conf)[0] == 0
    assert node.cni("ADD", "drop", drop, conf=conf)[0] == 0
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert node.cni("GC", conf=gc_conf)[0] == 0
    assert [e["container_id"] for e in node.api("endpoint.list")] == ["keep"]
    node.stop_agent()
    code, err, _ = node.cni("STATUS", conf=conf)
    assert code != 0 and err["code"] == c.PLUGIN_NOT_AVAILABLE


def test_concurrent_adds_get_distinct_addresses(node: LabNode) -> None:
    from concurrent.futures import ThreadPoolExecutor

    paths = [pod_ns(node, f"p{i}") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: node.cni("ADD", f"cid{i}", paths[i]), range(8)))
    ips = [r[1]["ips"][0]["address"] for r in results]
    assert all(r[0] == 0 for r in results) and len(set(ips)) == 8
