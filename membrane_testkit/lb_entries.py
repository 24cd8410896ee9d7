"""Minimal frontend/backend/entry values for tests that write the load balancer's maps from
`membrane.lb_maps.desired_contents` directly (it reads these attributes only), without the
whole service table of `membrane.services`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Front:
    ip: str
    port: int
    protocol: str = "TCP"
    kind: str = "ClusterIP"


@dataclass(frozen=True)
class Back:
    ip: str
    port: int
    node: str = ""
    ready: bool = True
    terminating: bool = False


@dataclass(frozen=True)
class Entry:
    frontend: Front
    backends: tuple[Back, ...] = ()
    affinity_timeout: int = 0
    external_local: bool = False
    internal_local: bool = False
