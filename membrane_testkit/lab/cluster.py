"""A lab Kubernetes cluster: the API stand-in, a real `membrane-operator` process, and lab nodes
whose agents run in Kubernetes mode against the operator's state stream.

The operator listens on a unix socket under the lab dir (reachable from every node namespace;
nothing listens on the machine's network), with mutual TLS: the lab generates the cluster CA
into the operator's Secret before the operator starts (as a chart may), and gives each node
its certificate in a directory the agent reads with `--tls-dir` (as a mounted Secret would).
`tls=False` runs both sides with `--insecure-plaintext` instead. Objects go through the real `kubernetes` client;
`run_pod` plays kubelet: Pod object first, CNI ADD through the real plugin, then the pod's
status gets its IP.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from kubernetes import client

from membrane.tls.certificates import Authority
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.waiting import WaitTimeout, wait_for

from .node import LAB_DIR, LabNode, Pod, tool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class KubeLab:
    def __init__(self, prefix: str = "mbt", cluster_cidr: str = "10.210.0.0/16",
                 identity_wait: float = 1.0, tls: bool = True) -> None:
        self.prefix = prefix
        self.tls = tls
        self.authority: Authority | None = None
        self.name = f"{prefix}-kube{os.getpid() % 10000}"
        self.cluster_cidr = cluster_cidr
        self.identity_wait = identity_wait
        self.api = KubeApiServer(port=0)
        self.api_client: client.ApiClient | None = None
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_http = free_port()
        self.nodes: dict[str, LabNode] = {}
        self._counter = 0

    # --- paths ---------------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        return LAB_DIR / self.name

    @property
    def operator_socket(self) -> Path:
        return self.workdir / "operator.sock"

    @property
    def operator_log(self) -> Path:
        return self.workdir / "operator.log"

    # --- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> KubeLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, operator: bool = True) -> KubeLab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.api.start()
        self.api_client = self.api.api_client()
        if self.tls:
            self.authority = Authority.create()
            self.core.create_namespaced_secret("kube-system", {
                "metadata": {"name": "membrane-ca"}, "type": "Opaque",
                "data": {"ca.crt": base64.b64encode(self.authority.cert_pem).decode(),
                         "ca.key": base64.b64encode(self.authority.key_pem).decode()}})
        if operator:
            self.start_operator()
        return self

    def start_operator(self, timeout: float = 30) -> None:
        env = {**os.environ, "MEMBRANE_API_SERVER": self.api.url, "MEMBRANE_POD_NAME": f"{self.name}-op",
               "MEMBRANE_INSTALL_CRDS": "true", "MEMBRANE_CLUSTER_CIDR": self.cluster_cidr,
               "MEMBRANE_HTTP_ADDR": f"127.0.0.1:{self.operator_http}",
               "MEMBRANE_GRPC_ADDR": f"unix:{self.operator_socket}",
               "MEMBRANE_LEASE_DURATION_SECONDS": "3", "MEMBRANE_RENEW_DEADLINE_SECONDS": "2",
               "MEMBRANE_RETRY_PERIOD_SECONDS": "0.3", "MEMBRANE_RESYNC_SECONDS": "0.2",
               **({} if self.tls else {"MEMBRANE_INSECURE_PLAINTEXT": "true"})}
        log = open(self.operator_log, "ab")
        self.operator = subprocess.Popen([tool("membrane-operator")], env=env, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        log.close()
        operator = self.operator

        def ready() -> bool:
            if operator.poll() is not None:
                raise RuntimeError(f"operator exited {operator.returncode}: {self.log_tail()}")
            return http_status(f"http://127.0.0.1:{self.operator_http}/readyz") == 200
        try:
            wait_for(ready, timeout, 0.1, "the operator's /readyz")
        except WaitTimeout:
            raise RuntimeError(f"operator not ready after {timeout}s: {self.log_tail()}") from None

    def stop_operator(self, sig: int = signal.SIGTERM) -> int | None:
        if self.operator is None:
            return None
        if self.operator.poll() is None:
            self.operator.send_signal(sig)
            try:
                self.operator.wait(20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(5)
        code, self.operator = self.operator.returncode, None
        return code

    def operator_metric(self, name: str) -> float:
        """A sample of the operator's /metrics (sum over label sets), 0 when absent."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.operator_http}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"))

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.operator_log.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def close(self) -> None:
        for node in list(self.nodes.values()):
            try:
                node.destroy()
            except Exception:  # noqa: BLE001 - cleanup goes on regardless
                pass
        self.nodes.clear()
        self.stop_operator()
        if self.api_client is not None:
            self.api_client.close()
            self.api_client = None
        if self.api.running:
            self.api.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- Kubernetes objects --------------------------------------------------------------------
    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api_client)

    def create_namespace(self, name: str, **labels: str) -> None:
        self.core.create_namespace({"metadata": {"name": name, "labels": labels}})

    def identities(self) -> dict[int, dict[str, str]]:
        """MembraneIdentity objects: number -> security labels."""
        found = client.CustomObjectsApi(self.api_client).list_cluster_custom_object(
            "membrane.io", "v1alpha1", "membraneidentities")
        return {int(o["metadata"]["name"]): dict(o.get("securityLabels") or {}) for o in found.get("items", [])}

    # --- nodes and pods ------------------------------------------------------------------------
    def add_node(self, start: bool = True, wait_ready: bool = True, extra_args: list[str] | None = None) -> LabNode:
        """A Node object plus a lab node whose agent runs in Kubernetes mode."""
        self._counter += 1
        name = f"k{os.getpid() % 10000}x{self._counter}"
        self.core.create_node({"metadata": {"name": name}, "status": {
            "addresses": [{"type": "InternalIP", "address": f"192.0.2.{self._counter}"}]}})
        node = LabNode(name, prefix=self.prefix, extra_args=[
            "--mode", "kubernetes", "--operator-address", f"unix://{self.operator_socket}",
            "--cluster-cidr", self.cluster_cidr, "--identity-wait-seconds", str(self.identity_wait),
            "--resync-seconds", "5", *self.tls_args(node_dir=LAB_DIR / f"{self.prefix}-{name}"),
            *(extra_args or [])])
        self.nodes[name] = node
        node.create()
        if self.tls:
            self.issue_node_cert(name, node.workdir / "tls")
        if start:
            node.start_agent(wait_ready=wait_ready)
        return node

    def tls_args(self, node_dir: Path) -> list[str]:
        return ["--tls-dir", str(node_dir / "tls")] if self.tls else ["--insecure-plaintext"]

    def issue_node_cert(self, name: str, directory: Path, lifetime: float = 86400.0) -> None:
        """The node's key and certificate from the lab CA, where `--tls-dir` points."""
        from membrane.agent.cert_keeping import write_dir
        from membrane.tls.material import Material

        assert self.authority is not None
        pair = self.authority.issue(name, dt.timedelta(seconds=lifetime))
        write_dir(directory, Material(self.authority.cert_pem, pair.key_pem, pair.cert_pem))

    def create_pod(self, node: LabNode, namespace: str, name: str, labels: dict[str, str],
                   ports: tuple[int, ...] = (80,)) -> None:
        self.core.create_namespaced_pod(namespace, {
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node.name, "containers": [{"name": "c", "image": "lab", "ports": [
                {"name": f"p{port}", "containerPort": port, "protocol": "TCP"} for port in ports]}]}})

    def run_pod(self, node: LabNode, namespace: str, name: str, **labels: str) -> Pod:
        """As kubelet does: the Pod object exists, CNI ADD wires it, then its status gets the IP."""
        self.create_pod(node, namespace, name, labels)
        pod = node.add_pod(name, namespace)
        self.set_pod_ip(namespace, name, pod.ip)
        return pod

    def set_pod_ip(self, namespace: str, name: str, ip: str) -> None:
        self.core.patch_namespaced_pod_status(name, namespace, [
            {"op": "add", "path": "/status/podIP", "value": ip},
            {"op": "add", "path": "/status/podIPs", "value": [{"ip": ip}]},
            {"op": "add", "path": "/status/phase", "value": "Running"}])

