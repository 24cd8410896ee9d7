"""`membrane-operator` as a process: configured by MEMBRANE_* variables like the Helm chart
does, probes and metrics on HTTP, SIGTERM hands the lease back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

from kubernetes import client

from membrane.operator.config import parse_config
from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.lab.cluster import free_port
from membrane_testkit.waiting import wait_for


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def test_config_precedence() -> None:
    env = {"MEMBRANE_POD_NAME": "op-pod", "MEMBRANE_CLUSTER_CIDR": "10.9.0.0/16",
           "MEMBRANE_LEADER_ELECTION": "true"}
    config = parse_config(["--cluster-cidr", "10.8.0.0/16"], env)
    assert config.identity == "op-pod" and config.cluster_cidr == "10.8.0.0/16"
    assert config.leader_election


def test_operator_process_probes_metrics_and_release() -> None:
    http_port, grpc_port = free_port(), free_port()
    with KubeApiServer(port=0) as api:
        env = {**os.environ, "MEMBRANE_API_SERVER": api.url, "MEMBRANE_POD_NAME": "op-proc",
               "MEMBRANE_LEASE_NAMESPACE": "kube-system", "MEMBRANE_INSTALL_CRDS": "true",
               "MEMBRANE_HTTP_ADDR": f"127.0.0.1:{http_port}",
               "MEMBRANE_GRPC_ADDR": f"127.0.0.1:{grpc_port}"}
        process = subprocess.Popen([sys.executable, "-m", "membrane.operator.main"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            def ready() -> bool:
                assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
                return get(f"http://127.0.0.1:{http_port}/readyz")[0] == 200
            wait_for(ready, 20, 0.1, "the operator's /readyz")
            assert get(f"http://127.0.0.1:{http_port}/healthz")[0] == 200
            status, metrics = get(f"http://127.0.0.1:{http_port}/metrics")
            assert status == 200 and "membrane_operator_is_leader" in metrics
            assert "membrane_operator_state_propagation_seconds_bucket" in metrics
            leases = client.CoordinationV1Api(api.api_client())
            wait_for(lambda: leases.read_namespaced_lease("membrane-operator", "kube-system")
                     .spec.holder_identity == "op-proc", 10, 0.1, "op-proc to hold the lease")
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
        lease = leases.read_namespaced_lease("membrane-operator", "kube-system")
        assert not lease.spec.holder_identity  # released: a standby need not wait
