"""Operator configuration: defaults < MEMBRANE_* environment (what the Helm chart sets) < flags."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OperatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Where the API is: a kubeconfig file, an explicit URL (tests: plain HTTP, no auth), or
    # in-cluster (service account) when neither is given.
    kubeconfig: str | None = None
    api_server: str | None = None
    identity: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    leader_election: bool = True
    lease_name: str = "membrane-operator"
    lease_namespace: str = "kube-system"
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    renew_deadline_seconds: float = Field(default=10.0, gt=0)
    retry_period_seconds: float = Field(default=2.0, gt=0)
    cluster_cidr: str = "10.200.0.0/16"
    node_cidr_prefix: int = Field(default=24, ge=8, le=30)
    identity_gc_seconds: float = Field(default=300.0, ge=0)
    http_addr: str = "127.0.0.1:9963"
    grpc_addr: str = "127.0.0.1:4250"
    install_crds: bool = False
    state_log_size: int = Field(default=1024, ge=1)
    watch_read_timeout_seconds: float = Field(default=90.0, gt=0)
    resync_seconds: float = Field(default=1.0, gt=0)  # GC timers and retries of failed writes
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Mutual TLS on the state stream: the cluster CA lives in this Secret (namespace/name;
    # created at first start, its certificate also published in a ConfigMap of the same name),
    # agents' CSRs (signer membrane.io/agent) are signed for this long and renewed at 2/3.
    tls_ca_secret: str = Field(default="kube-system/membrane-ca", pattern=r"^[a-z0-9-.]+/[a-z0-9-.]+$")
    tls_cert_lifetime_seconds: float = Field(default=86400.0, ge=10)
    # The agents' service account (namespace/name) whose node-bound tokens may ask for the
    # certificate of the node they are bound to (besides kubelet's system:node:NAME).
    tls_agent_service_account: str = Field(default="kube-system/membrane-agent",
                                           pattern=r"^[a-z0-9-.]+/[a-z0-9-.]+$")
    insecure_plaintext: bool = False  # serve the state stream without TLS (tests, benchmarks)
    # The leader labels its own pod (namespace/identity) so the chart's Service routes to it.
    leader_label: bool = False
    pod_namespace: str = ""

    @model_validator(mode="after")
    def _timing(self) -> OperatorConfig:
        if not (self.retry_period_seconds < self.renew_deadline_seconds
                < self.lease_duration_seconds):
            raise ValueError("need retry period < renew deadline < lease duration")
        if self.leader_label and not self.pod_namespace:
            raise ValueError("leader_label needs pod_namespace (the namespace of this replica's pod)")
        return self


# What `membrane-operator --help` says about each option: one entry per OperatorConfig field.
# tests/integration/test_operator_help.py fails when a field has no entry here (or an entry no field).
HELP: dict[str, str] = {
    "kubeconfig": "kubeconfig file for the API server (neither this nor --api-server: in-cluster "
                  "service account)",
    "api_server": "API server URL, plain HTTP without authentication (tests, the lab)",
    "identity": "this replica's name in the leader-election Lease and in Events (the chart: the pod "
                "name)",
    "leader_election": "elect one leader with a coordination.k8s.io Lease; only the leader writes "
                       "to the API and serves the state stream (a standby refuses it: UNAVAILABLE, agents retry)",
    "lease_name": "name of the leader-election Lease",
    "lease_namespace": "namespace of the leader-election Lease",
    "lease_duration_seconds": "how long a Lease holds without renewal before another replica may "
                              "take it",
    "renew_deadline_seconds": "the leader steps down if it could not renew within this long",
    "retry_period_seconds": "how often replicas try to acquire or renew the Lease",
    "cluster_cidr": "pod address range that PodCIDRs are carved from",
    "node_cidr_prefix": "prefix length of each node's PodCIDR (8-30)",
    "identity_gc_seconds": "MembraneIdentity objects no pod has used for this long are deleted "
                           "(0: at once)",
    "http_addr": "HOST:PORT of /healthz, /readyz and /metrics",
    "grpc_addr": "HOST:PORT (or unix:/path) of the state stream agents subscribe to",
    "install_crds": "create membrane's CRDs at start when missing (needs RBAC on "
                    "customresourcedefinitions)",
    "state_log_size": "deltas kept for agents that reconnect; one further behind gets a snapshot",
    "watch_read_timeout_seconds": "a watch that sends nothing (not even a bookmark) for this long "
                                  "is restarted",
    "resync_seconds": "period of GC timers and of retries of failed API writes",
    "log_level": "debug, info, warning or error",
    "tls_ca_secret": "Secret (namespace/name) holding the cluster CA (ca.crt, ca.key) that signs the "
                     "state stream's certificates; created at first start, its certificate also "
                     "published in a ConfigMap of the same name for agents that bootstrap by CSR",
    "tls_cert_lifetime_seconds": "lifetime of the operator's serving certificate and of the node "
                                 "certificates it signs; each is renewed at 2/3 of it, without restarts",
    "tls_agent_service_account": "service account (namespace/name) whose node-bound tokens may request "
                                 "the certificate of their node (kubelet's system:node:NAME always may)",
    "insecure_plaintext": "serve the state stream without TLS: no client authentication (tests and "
                          "benchmarks only; agents must be started with --insecure-plaintext too)",
    "leader_label": "while leading, label this replica's pod (identity, in pod_namespace) "
                    "membrane.io/operator-leader=true, so a Service selecting it routes agents to the "
                    "leader; removed when it stops leading (needs RBAC: patch pods)",
    "pod_namespace": "namespace of this replica's pod (the chart: from the downward API)",
}


def _help(name: str) -> str:
    field = OperatorConfig.model_fields[name]
    default = "<hostname>-<pid>" if field.default_factory is not None else field.default
    shown = "not set" if default is None else str(default).lower() if isinstance(default, bool) else default
    return f"{HELP.get(name, '')} (default: {shown}; env MEMBRANE_{name.upper()})".replace("%", "%%")


def host_port(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host or "127.0.0.1", int(port)


_ENV_ALIASES = {"identity": ("MEMBRANE_POD_NAME",)}  # the chart names the replica by its pod


def _env_values(env: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name in OperatorConfig.model_fields:
        for var in (f"MEMBRANE_{name.upper()}", *_ENV_ALIASES.get(name, ())):
            if var in env:
                values[name] = env[var]
                break
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command line: one flag per OperatorConfig field, described from HELP."""
    parser = argparse.ArgumentParser(
        prog="membrane-operator", description="membrane cluster control plane: watches the "
        "Kubernetes API, assigns PodCIDRs and identities, validates NetworkPolicies and streams "
        "the state to every agent.",
        epilog="Every option may also come from the environment as MEMBRANE_<OPTION> (flags win).")
    for name, field in OperatorConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None, help=_help(name))
        else:
            metavar = name.rpartition("_")[2].upper() if name.endswith(("_seconds", "_addr")) else None
            parser.add_argument(flag, dest=name, default=None, help=_help(name), metavar=metavar)
    return parser


def parse_config(argv: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None) -> OperatorConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    values = _env_values(os.environ if env is None else env)
    values.update({k: v for k, v in vars(args).items() if v is not None})
    try:
        return OperatorConfig.model_validate(values)
    except ValueError as exc:
        parser.error(str(exc))
        raise
