"""The agent exactly as the chart's DaemonSet starts it, on a lab node (root).

The chart is rendered with its defaults; the agent container's command line and environment
are built as kubelet builds them (downward API, the operator Service's environment variables,
`$(VAR)` expansion), its volumes are bound at their mount paths, and it runs with only the
container's capabilities and a read-only /proc/sys (membrane_testkit.lab.container). The operator
Service's ClusterIP is reachable in the node as kube-proxy would make it (a forwarder on that
address to the lab operator). The agent must reach ready against the operator and wire pods
that talk to each other; its sysctls land through the mounted /proc/sys/net.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from membrane_testkit import chart
from membrane_testkit.lab import container, netns
from membrane_testkit.lab.cluster import KubeLab
from membrane_testkit.lab.node import LabNode
from membrane_testkit.lab.traffic import CONNECT, OK_SERVER
from membrane_testkit.waiting import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, eBPF)")

CLUSTER_IP = "10.96.0.50"  # the operator Service's ClusterIP in this emulation
ROOT = Path(__file__).resolve().parents[2]

# kube-proxy's part: connections to the ClusterIP reach the operator (here a unix socket).
FORWARDER = r"""
import socket, sys, threading
host, port, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((host, port)); srv.listen(64)
print("listening", flush=True)
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try: s.shutdown(socket.SHUT_RDWR)
            except OSError: pass
while True:
    c, _ = srv.accept()
    u = socket.socket(socket.AF_UNIX)
    try:
        u.connect(target)
    except OSError:  # the operator is down: refuse this one, keep serving
        c.close(); u.close(); continue
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
"""


@pytest.fixture
def lab() -> Iterator[KubeLab]:
    # tls.enabled=false: the lab's API stand-in is plain HTTP on the machine's loopback, which the
    # agent's in-cluster TLS bootstrap (HTTPS to KUBERNETES_SERVICE_HOST) cannot use; the
    # bootstrap's API calls and RBAC are covered by tests/unit/test_chart_rbac.py.
    kube = KubeLab(identity_wait=1.0, tls=False)
    helpers: list[subprocess.Popen[bytes]] = []
    kube.helpers = helpers  # type: ignore[attr-defined]
    try:
        kube.start()
        yield kube
    finally:
        for proc in helpers:
            proc.kill()
            proc.wait(5)
        nodes = [n.netns for n in kube.nodes.values()]
        kube.close()
        assert not [n for prefix in nodes for n in netns.listed(prefix)], "lab namespaces left behind"


def _volumes(spec: dict[str, Any], agent: dict[str, Any], node: LabNode,
             configmap: dict[str, str]) -> list[container.Volume]:
    """The agent's volumeMounts, each backed by what the volume is on a lab node."""
    config_dir = node.workdir / "configmap"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, text in configmap.items():
        (config_dir / name).write_text(text)
    (node.workdir / "xtables.lock").touch()
    # Host paths of a real node -> where this lab node keeps them. A new hostPath in the chart
    # fails here until the emulation knows it.
    lab_paths = {
        "/sys/fs/bpf": node.pin_root,  # on the machine's bpffs; LabNode.destroy removes it
        "/run/membrane": node.workdir,  # the agent socket lands where LabNode expects it
        "/var/lib/membrane": node.workdir / "state",
        "/var/run/netns": netns.NETNS_DIR,  # pod namespaces, as the runtime makes them
        "/run/xtables.lock": node.workdir / "xtables.lock",
        "/proc/sys/net": Path("/proc/sys/net"),  # per task: the node's namespace
        "/lib/modules": Path("/lib/modules"),
        "/usr/src": Path("/usr/src"),
        "/opt/cni/bin": node.workdir / "cni-bin",
        "/etc/cni/net.d": node.workdir / "net.d",
    }
    sources: dict[str, Path] = {}
    for vol in spec["volumes"]:
        if "hostPath" in vol:
            path = vol["hostPath"]["path"]
            assert path in lab_paths, f"volume {vol['name']}: hostPath {path} is not emulated"
            sources[vol["name"]] = Path(lab_paths[path])
        elif "configMap" in vol:
            sources[vol["name"]] = config_dir
        elif "emptyDir" in vol:
            sources[vol["name"]] = node.workdir / f"empty-{vol['name']}"
        else:
            raise AssertionError(f"volume {vol['name']}: unsupported source {vol}")
    out = []
    for mount in agent["volumeMounts"]:
        source = sources[mount["name"]]
        if not source.exists():
            source.mkdir(parents=True)
        out.append(container.Volume(str(source), mount["mountPath"], bool(mount.get("readOnly"))))
    # The "image": the installed membrane (this checkout and its venv) at its own path.
    out.append(container.Volume(str(ROOT), str(ROOT), True))
    return out


def _start_chart_agent(lab: KubeLab, docs: list[dict[str, Any]], name: str,
                       drop_args: tuple[str, ...] = ()) -> tuple[LabNode, list[str], list[str]]:
    ds = chart.find(docs, "DaemonSet")[0]
    spec = chart.pod_spec(ds)
    agent = chart.container(spec, "agent")
    sc = agent["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    wanted = list(sc["capabilities"]["add"])
    usable = [c for c in wanted if c in container.machine_capabilities()]
    node_ip = f"192.0.2.{len(lab.nodes) + 10}"
    lab.core.create_node({"metadata": {"name": name}, "status": {"addresses": [
        {"type": "InternalIP", "address": node_ip}]}})
    node = LabNode(name, prefix=lab.prefix)
    lab.nodes[name] = node
    node.create()
    netns.run(["ip", "-n", node.netns, "addr", "add", f"{CLUSTER_IP}/32", "dev", "lo"])
    forwarder = subprocess.Popen(["nsenter", f"--net={netns.NETNS_DIR / node.netns}", "--", sys.executable,
                                  "-c", FORWARDER, CLUSTER_IP, "4250", str(lab.operator_socket)],
                                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    lab.helpers.append(forwarder)  # type: ignore[attr-defined]
    assert forwarder.stdout is not None and forwarder.stdout.readline().strip() == b"listening"

    links: dict[str, str] = {}
    for service in chart.find(docs, "Service"):
        if service["metadata"]["name"].endswith("-operator"):
            links.update(chart.service_env(service, CLUSTER_IP))
    env = chart.container_env(agent, {"spec.nodeName": name, "status.hostIP": node_ip}, links)
    env = {k: v for k, v in env.items() if k not in links}  # kubelet passes links, the agent ignores them
    env["PATH"] = f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    argv = [a for a in chart.command_line(agent, env) if a not in drop_args]
    configmap = chart.find(docs, "ConfigMap")[0]["data"]
    volumes = _volumes(spec, agent, node, configmap)
    log = open(node.log_path, "ab")
    node.process = container.popen_container(node.netns, node.workdir / "rootfs", volumes, usable, env, argv,
                                             stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    return node, argv, usable


def _caps_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff")


def test_chart_agent_with_capabilities_only_reaches_ready_and_wires_pods(lab: KubeLab) -> None:
    helm = chart.helm_binary()
    docs = chart.render(helm, {"tls.enabled": False})
    node, argv, caps = _start_chart_agent(lab, docs, f"c{os.getpid() % 10000}a")
    assert argv[0] == "membrane-agent" and "--procfs=/host/proc" in argv
    started = time.monotonic()
    node.wait_ready(timeout=180)
    ready_after = time.monotonic() - started
    assert node.process is not None
    # The process serving is the container's: only the chart's capabilities.
    effective = _caps_of(node.process.pid)
    machine = _caps_of(os.getpid())
    assert effective != machine and bin(effective).count("1") == len(caps), (hex(effective), caps)
    st = node.api("status")
    assert st["mode"] == "kubernetes" and st["ready"] and st["cluster"]["synced"], st
    lab.create_namespace("shop", team="a")
    server = lab.run_pod(node, "shop", "db", app="db")
    client = lab.run_pod(node, "shop", "web", app="web")
    server_proc = netns.popen_in(server.netns, [sys.executable, "-c", OK_SERVER, server.ip],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert server_proc.stdout is not None and server_proc.stdout.readline().strip() == b"ready"
        def connects() -> bool:
            return client.exec([sys.executable, "-c", CONNECT, server.ip, "80", "1.0"],
                               check=False).stdout.strip() == "ok"
        assert wait_for(connects, 20, 0.2, f"a connection to {server.ip}:80 ({node.log_tail()})")
    finally:
        server_proc.kill()
        server_proc.wait(5)
    # Sysctls went through the node's /proc/sys/net mounted at /host/proc/sys/net.
    host_if = next(e["host_ifname"] for e in node.api("endpoint.list") if e["pod"] == "shop/db")
    value = netns.exec_in(node.netns, ["cat", f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"]).stdout.strip()
    assert value == "1"
    assert netns.exec_in(node.netns, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
    print(f"chart agent: ready {ready_after:.1f}s after start, capabilities {caps}")


def test_the_container_really_has_a_read_only_proc_sys(lab: KubeLab) -> None:
    """The emulation is not a no-op: without --procfs the agent cannot write its sysctls."""
    docs = chart.render(chart.helm_binary(), {"tls.enabled": False})
    node, _argv, _caps = _start_chart_agent(lab, docs, f"c{os.getpid() % 10000}b", drop_args=("--procfs=/host/proc",))
    assert node.process is not None
    code = node.process.wait(60)
    assert code != 0
    assert "Read-only file system" in node.log_path.read_text(), node.log_tail()


def test_cni_conf_appears_when_ready_and_goes_on_stop(lab: KubeLab) -> None:
    """The conflist is written by the agent once it is ready (not before: the operator is down
    at first) and removed when it stops (cni.uninstall=always, the default)."""
    docs = chart.render(chart.helm_binary(), {"tls.enabled": False})
    conf_name = "05-membrane.conflist"
    lab.stop_operator()
    node, argv, _caps = _start_chart_agent(lab, docs, f"c{os.getpid() % 10000}c")
    assert "--cni-uninstall=always" in argv
    conf = node.workdir / "net.d" / conf_name
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the agent serves its API, not ready: no operator yet
        try:
            if node.api("status")["ready"] is False:
                break
        except Exception:  # noqa: BLE001 - still starting
            pass
        time.sleep(0.2)
    else:
        raise AssertionError(node.log_tail())
    time.sleep(2)  # a few housekeeping rounds
    assert not conf.exists(), "the conflist appeared before the agent was ready"
    lab.start_operator()
    node.wait_ready(timeout=60)
    deadline = time.monotonic() + 10
    while not conf.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert conf.exists(), node.log_tail()
    assert conf.read_text() == chart.find(docs, "ConfigMap")[0]["data"][conf_name]
    assert node.stop_agent() == 0
    assert not conf.exists(), "the conflist outlived the agent (cni.uninstall=always)"
