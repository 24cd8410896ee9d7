"""Pod bandwidth limits (runtimeConfig.bandwidth, from kubernetes.io/{ingress,egress}-bandwidth)
measured with iperf3 between pods of one node: the limited direction runs at the limit, the
unlimited path many times faster. CHECK sees a removed shaper; DEL removes the IFB; bad
values are refused with code 7 before anything is allocated."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from membrane import cni_types as c
from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, Pod
from membrane_testkit.waiting import wait_for

RATE = 20_000_000  # bits/s
BURST = 256_000  # bits (32 kB): small next to what a few seconds at RATE carry
TOLERANCE = 0.15
SECONDS = 4


def add(node: LabNode, name: str, bandwidth: dict[str, int] | None = None) -> Pod:
    extra: dict[str, Any] = {"runtimeConfig": {"bandwidth": bandwidth}} if bandwidth else {}
    path = str(netns.create(f"{node.netns}-{name}"))
    code, res, raw = node.cni("ADD", name, path, conf=node.net_conf("1.0.0", **extra),
                              args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}")
    assert code == 0 and res is not None, raw
    pod = Pod(name, "default", f"{node.netns}-{name}", name, res)
    node.pods[name] = pod
    return pod


def goodput(server: Pod, client: Pod, port: int = 5201) -> float:
    """Receiver's bits/s of one TCP stream, the first second (slow start, burst) left out."""
    proc = netns.popen_in(server.netns, ["iperf3", "-s", "-1", "-B", server.ip, "-p", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            assert proc.poll() is None, "iperf3 server exited"
            return bool(netns.exec_in(server.netns, ["ss", "-Hltn", f"sport = :{port}"]).stdout.strip())
        wait_for(listening, 10, 0.05, "the iperf3 server to listen")
        out = client.exec(["iperf3", "-c", server.ip, "-p", str(port), "-t", str(SECONDS), "-O", "1", "-J"],
                          timeout=SECONDS + 30).stdout
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"])


def test_limits_hold_between_pods(node: LabNode) -> None:
    free = add(node, "free")
    inbound = add(node, "in", {"ingressRate": RATE, "ingressBurst": BURST})
    outbound = add(node, "out", {"egressRate": RATE, "egressBurst": BURST})
    assert [i["name"] for i in inbound.result["interfaces"]][-1] == "mb-ifb-eth0"
    into_limited = goodput(server=inbound, client=free)
    from_limited = goodput(server=free, client=outbound)
    unlimited = goodput(server=free, client=inbound)  # the ingress-limited pod sends freely
    print(f"into limited {into_limited / 1e6:.1f} Mbit/s, from limited {from_limited / 1e6:.1f}, unlimited {unlimited / 1e6:.0f}")
    for measured in (into_limited, from_limited):
        assert abs(measured - RATE) <= TOLERANCE * RATE, (into_limited, from_limited, unlimited)
    assert unlimited > 5 * RATE, unlimited


def test_check_and_del(node: LabNode) -> None:
    limits = {"ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE, "egressBurst": BURST}
    pod = add(node, "p", limits)
    path = str(netns.NETNS_DIR / pod.netns)
    conf = node.net_conf("1.0.0", runtimeConfig={"bandwidth": limits}, prevResult=pod.result)
    assert node.cni("CHECK", "p", path, conf=conf)[0] == 0
    assert node.cni("ADD", "p", path, conf=conf)[0] == 0  # repeated ADD: same shapers, no error
    pod.exec(["tc", "qdisc", "del", "dev", "eth0", "root"])
    code, err, _ = node.cni("CHECK", "p", path, conf=conf)
    assert code != 0 and err["code"] == c.INTERFACE_MISMATCH and "egress limit" in err["details"], err
    assert node.cni("DEL", "p", path, conf=conf)[0] == 0
    node.pods.pop("p")
    assert "mb-ifb" not in pod.exec(["ip", "-o", "link"]).stdout


@pytest.mark.parametrize("bandwidth", [{"ingressRate": RATE}, {"egressRate": RATE, "egressBurst": 800},
                                       {"egressRate": "20M", "egressBurst": BURST}])
def test_bad_limits_are_refused_before_anything_is_allocated(node: LabNode, bandwidth: dict[str, Any]) -> None:
    path = str(netns.create(f"{node.netns}-bad"))
    code, err, raw = node.cni("ADD", "bad", path, conf=node.net_conf("1.0.0", runtimeConfig={"bandwidth": bandwidth}))
    assert code != 0 and err is not None and err["code"] == c.INVALID_CONFIG, raw
    assert "runtimeConfig.bandwidth." in err["msg"]
    assert node.api("endpoint.list") == [] and node.api("status")["endpoints"]["ipam"]["allocated"] == 0
