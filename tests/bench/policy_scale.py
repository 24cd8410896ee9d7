"""Policy engine at scale, pure (no root): 1,000 policies over 10,000 pods.

The scenario (the policy issue's): 50 namespaces (label team=t{n%5}), 10,000 pods (app=a{i%200},
tier=t{i%3}, a named port), 1,000 NetworkPolicies each selecting app=a{j%200} in its namespace
with two peers (podSelector app=a{j+1}; namespaceSelector team + podSelector tier=t1) and ports
80 + 8000-8100. Measured:

- `engine`: the pure `PolicyResolver` computing every pod's endpoint policy (what a cluster-wide
  view costs): objects fed one by one, then one batch computation; plus `compute_policy` from
  scratch;
- `agent`: the agent's `PolicyManager` with fake maps and 20 local endpoints (only those get
  entries, every pod stays a peer): ingest, first apply, then single policy changes + apply.

The object builders are shared with the real-agent benchmark (`policy_bench`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from membrane.k8s_models import ObjectRef, parse_object
from membrane.policy import FlatKey, FlatValue, PolicyResolver, compute_policy
from membrane.policy.inputs import PodInfo

NAMESPACES = 50
PODS = 10_000
POLICIES = 1_000
LOCAL = 20


def namespace_obj(n: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{n}", "labels": {"team": f"t{n % 5}"}}}


def pod_obj(i: int, namespaces: int = NAMESPACES, ip: str | None = None) -> dict[str, Any]:
    ip = ip or f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": f"ns{i % namespaces}",
                         "labels": {"app": f"a{i % 200}", "tier": f"t{i % 3}"}},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 80}]}]},
            "status": {"podIP": ip}}


def policy_obj(j: int, namespaces: int = NAMESPACES) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": f"pol{j}", "namespace": f"ns{j % namespaces}"},
            "spec": {"podSelector": {"matchLabels": {"app": f"a{j % 200}"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"a{(j + 1) % 200}"}}},
                                           {"namespaceSelector": {"matchLabels": {"team": f"t{j % 5}"}},
                                            "podSelector": {"matchLabels": {"tier": "t1"}}}],
                                  "ports": [{"port": 80}, {"port": 8000, "endPort": 8100}]}]}}


def changed_policy_obj(step: int) -> dict[str, Any]:
    """Policy ns0/pol0 rewritten: peers app=a50 of ns0 (pods exist), a different port each step."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "pol0", "namespace": "ns0"},
            "spec": {"podSelector": {"matchLabels": {"app": "a0"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "a50"}}}],
                                  "ports": [{"port": 81 + step % 100}]}]}}


class FakeMaps:
    """The policy manager's map port, in memory."""

    def __init__(self) -> None:
        self.policy: dict[FlatKey, FlatValue] = {}
        self.ipcache: dict[IPv4Network, object] = {}
        self.cidrs: dict[IPv4Network, int] = {}

    def capacity(self, role: str) -> int | None:
        return None

    def bump_policy_revision(self) -> int:
        return 1

    def _table(self, role: str) -> dict[Any, Any]:
        return {"policy": self.policy, "ipcache": self.ipcache, "cidr": self.cidrs}[role]

    def read_map(self, role: str) -> dict[Any, Any]:
        return dict(self._table(role))

    def update_map(self, role: str, entries: Mapping[Any, Any]) -> None:
        self._table(role).update(entries)

    def delete_map(self, role: str, keys: Sequence[Any]) -> int:
        table = self._table(role)
        for key in keys:
            del table[key]
        return len(keys)


def _timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def engine(pods: int = PODS, policies: int = POLICIES) -> dict[str, Any]:
    """The pure resolver for every pod; identities numbered by (namespace, app, tier)."""
    from membrane.policy import NamespaceInfo
    namespaces = [parse_object(namespace_obj(n)) for n in range(NAMESPACES)]
    infos = []
    for i in range(pods):
        obj = parse_object(pod_obj(i))
        infos.append(PodInfo.from_pod(obj, 256 + i % 600))  # type: ignore[arg-type]
    compiled = [parse_object(policy_obj(j)) for j in range(policies)]
    out: dict[str, Any] = {"pods": pods, "policies": policies}
    resolver = PolicyResolver(deferred=True)
    t_ns, _ = _timed(lambda: [resolver.on_update(NamespaceInfo.from_namespace(ns)) for ns in namespaces])  # type: ignore[arg-type]
    out["ingest_pods_s"], _ = _timed(lambda: [resolver.update_pod(p) for p in infos])
    out["ingest_policies_s"], _ = _timed(lambda: [resolver.update_policy(p) for p in compiled])  # type: ignore[arg-type]
    out["compute_s"], delta = _timed(resolver.flush)
    out["endpoints"] = len(delta.endpoints)
    out["entries"] = sum(len(e.upserts) for e in delta.endpoints.values())
    out["total_s"] = out["ingest_pods_s"] + out["ingest_policies_s"] + out["compute_s"] + t_ns
    out["from_scratch_s"], _ = _timed(lambda: compute_policy(namespaces, infos, compiled))  # type: ignore[arg-type]
    # One policy change with the non-deferred (per-update delta) resolver semantics.
    resolver.deferred = False
    changes = []
    for step in range(5):
        changes.append(_timed(lambda: resolver.update_policy(parse_object(changed_policy_obj(step))))[0])  # type: ignore[arg-type]
    out["one_change_s"] = sorted(changes)[len(changes) // 2]
    return out


def agent(pods: int = PODS, policies: int = POLICIES, changes: int = 7) -> dict[str, Any]:
    """The agent's manager with fake maps: 20 local endpoints among `pods`."""
    from membrane.agent.policy_syncing import LocalEndpoint, PolicyManager
    from membrane_testkit.label_identities import LabelIdentities
    out: dict[str, Any] = {"pods": pods, "policies": policies, "local_endpoints": LOCAL}
    with tempfile.TemporaryDirectory(prefix="mbbench-"):
        maps = FakeMaps()
        mgr = PolicyManager(LabelIdentities(), maps, lambda key, ident: None, list)
        ns_objs = [parse_object(namespace_obj(n)) for n in range(NAMESPACES)]
        pod_objs = [parse_object(pod_obj(i)) for i in range(pods)]
        pol_objs = [parse_object(policy_obj(j)) for j in range(policies)]
        for n, obj in enumerate(ns_objs):
            mgr.on_namespace(f"ns{n}", obj)  # type: ignore[arg-type]
        out["ingest_pods_s"], _ = _timed(
            lambda: [mgr.on_pod(ObjectRef(f"ns{i % NAMESPACES}", f"p{i}"), o) for i, o in enumerate(pod_objs)])  # type: ignore[arg-type]
        out["ingest_policies_s"], _ = _timed(
            lambda: [mgr.on_policy(ObjectRef(f"ns{j % NAMESPACES}", f"pol{j}"), o) for j, o in enumerate(pol_objs)])  # type: ignore[arg-type]
        for k in range(LOCAL):
            ip = pod_objs[k].ips[0]  # type: ignore[attr-defined]
            mgr.on_endpoint(ObjectRef(f"ns{k % NAMESPACES}", f"p{k}"), LocalEndpoint(f"c{k}", k + 1, IPv4Address(ip)))
        out["first_apply_s"], report = _timed(mgr.apply)
        out["first_apply"] = report
        out["total_s"] = out["ingest_pods_s"] + out["ingest_policies_s"] + out["first_apply_s"]
        samples = []
        for step in range(changes):
            obj = parse_object(changed_policy_obj(step))
            t, report = _timed(lambda: (mgr.on_policy(ObjectRef("ns0", "pol0"), obj), mgr.apply())[1])  # type: ignore[arg-type]
            samples.append(t)
        out["one_change_samples_ms"] = [round(s * 1000, 2) for s in samples]
        out["one_change_ms"] = sorted(samples)[len(samples) // 2] * 1000
        out["one_change_report"] = report
        out["noop_apply_ms"] = _timed(mgr.apply)[0] * 1000
        out["policy_entries"] = len(maps.policy)
        out["ipcache_entries"] = len(maps.ipcache)
    return out


if __name__ == "__main__":
    import json
    import sys
    which = sys.argv[1:] or ["engine", "agent"]
    for name in which:
        print(name, json.dumps({"engine": engine, "agent": agent}[name](), indent=1))
