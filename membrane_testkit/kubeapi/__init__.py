"""A Kubernetes API server stand-in for tests: real REST/JSON over HTTP on 127.0.0.1, in memory.

The official `kubernetes` client runs against it unmodified: discovery, CRUD with optimistic
concurrency, merge/strategic/JSON patches, status subresources, label and field selectors,
list+watch with bookmarks and 410 Gone after compaction, leases, events and CRDs. It pretends
to be one Kubernetes minor version (`kubernetes_version`, 1.26-1.37) and checks every write of
a built-in type against that version's real OpenAPI schemas, with fieldValidation semantics
(`validating`), so it refuses what a real server of that version refuses.

    with KubeApiServer() as api:
        core = kubernetes.client.CoreV1Api(api.api_client())

Run it as a process with `python -m membrane_testkit.kubeapi --port N [--state-file F]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .messages import User
from .serving import ErrorRule, KubeApiServer, RequestRecord

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration


def make_configuration(url: str) -> Configuration:
    """A `kubernetes.client.Configuration` for a stand-in at `url` (imports `kubernetes` lazily)."""
    from .clients import make_configuration as build

    return build(url)


def make_api_client(url: str) -> ApiClient:
    """A `kubernetes.client.ApiClient` for a stand-in at `url` (imports `kubernetes` lazily)."""
    from .clients import make_api_client as build

    return build(url)


__all__ = ["ErrorRule", "KubeApiServer", "RequestRecord", "User", "make_api_client", "make_configuration"]
