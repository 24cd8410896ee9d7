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

    @model_validator(mode="after")
    def _timing(self) -> OperatorConfig:
        if not (self.retry_period_seconds < self.renew_deadline_seconds
                < self.lease_duration_seconds):
            raise ValueError("need retry period < renew deadline < lease duration")
        return self


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


def parse_config(argv: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None) -> OperatorConfig:
    parser = argparse.ArgumentParser(prog="membrane-operator",
                                     description="membrane cluster control plane")
    for name, field in OperatorConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                                default=None)
        else:
            parser.add_argument(flag, dest=name, default=None, help=field.description)
    args = parser.parse_args(argv)
    values = _env_values(os.environ if env is None else env)
    values.update({k: v for k, v in vars(args).items() if v is not None})
    try:
        return OperatorConfig.model_validate(values)
    except ValueError as exc:
        parser.error(str(exc))
        raise
