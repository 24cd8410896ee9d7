"""apply --wait latency: from the request to "enforced" (map writes landed, policy revision
bumped), on a real standalone agent, with a small store and at scale.

Each sample flips one NetworkPolicy between allowing and denying web -> db with `apply --wait`
(the agent API membranectl uses, so no CLI start-up is counted), and checks right after that a
new TCP connection gets the new verdict. Plain `apply` (no --wait) is measured in the same run,
interleaved, for the cost of waiting. "At scale": 2,000 Pods (with IPs) and 200 other
NetworkPolicies in the store, 20 pods wired on the node. Writes bench-results/apply_wait.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from membrane.ctl.client import request
from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode
from membrane_testkit.lab.traffic import CONNECT, OK_SERVER

from .stats import median, percentile


def _pod(name: str, app: str, ip: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}, **({"status": {"podIP": ip}} if ip else {})}


def _policy(name: str, app: str, allow: bool, port: int = 80) -> dict[str, Any]:
    rules = [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": port}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                     "ingress": rules if allow else []}}


def _summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(median(ms) or 0, 2), "p99_ms": round(percentile(ms, 99) or 0, 2),
            "max_ms": round(max(ms), 2) if ms else None}


def _scenario(name: str, flips: int, extra_pods: int, extra_policies: int, wired: int) -> dict[str, Any]:
    node = LabNode(f"aw{os.getpid() % 10000}{name[0]}", pod_cidr="10.201.0.0/16", prefix="mbbench")
    node.create()
    server = None
    try:
        node.start_agent()
        objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                                         _pod("web", "web"), _pod("db", "db")]
        objects += [_pod(f"w{i}", f"app{i % 50}") for i in range(wired)]
        objects += [_pod(f"x{i}", f"app{i % 50}", f"10.99.{i // 250}.{i % 250 + 1}") for i in range(extra_pods)]
        objects += [_policy(f"p{i}", f"app{i % 50}", True, 1000 + i) for i in range(extra_policies)]
        request("apply", node.socket, timeout=600, objects=objects)
        pods = {n: node.add_pod(n, namespace="shop") for n in ("web", "db", *(f"w{i}" for i in range(wired)))}
        db = pods["db"]
        server = netns.popen_in(db.netns, [sys.executable, "-c", OK_SERVER, db.ip], stdout=subprocess.PIPE)
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        waited, plain, stale = [], [], 0
        for rep in range(flips):
            allow = rep % 2 == 0
            began = time.perf_counter()
            request("apply", node.socket, objects=[_policy("db", "db", allow)], wait=True, timeout_seconds=30)
            waited.append(time.perf_counter() - began)
            if rep % 10 == 0:  # a spot check that "enforced" holds (the netns tests check every time)
                out = netns.exec_in(pods["web"].netns, [sys.executable, "-c", CONNECT, db.ip, "80",
                                                        "1.0" if allow else "0.1"]).stdout.strip()
                stale += (out == "ok") != allow
            began = time.perf_counter()
            request("apply", node.socket, objects=[_policy("db", "db", not allow)])
            plain.append(time.perf_counter() - began)
            request("apply", node.socket, objects=[_policy("db", "db", allow)], wait=True)
        return {"store": {"pods": 2 + wired + extra_pods, "policies": 1 + extra_policies, "wired_pods": len(pods)},
                "apply_wait": _summary(waited), "apply_plain": _summary(plain), "stale_spot_checks": stale}
    finally:
        if server is not None:
            server.kill()
            server.wait()
        node.destroy()


def run(flips: int = 300) -> dict[str, Any]:
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "small": _scenario("small", flips, 0, 0, 0),
            "scale": _scenario("scale", flips, 2000, 200, 20)}


def markdown(results: dict[str, Any]) -> str:
    lines = ["# apply --wait latency", "",
             f"{results['date']}, {results['cores']} cores, load at start {' '.join(results['loadavg_at_start'])} "
             "(a shared, noisy machine: compare within this run).", "",
             "Request to answer through the agent API; `--wait` answers once the map writes have landed and",
             "the policy revision is bumped (established flows judged again). Plain `apply` is measured",
             "interleaved in the same run.", "",
             "| store | samples | apply --wait p50 | p99 | max | plain apply p50 | p99 | stale spot checks |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("small", "scale"):
        r = results[name]
        s = r["store"]
        label = f"{name}: {s['pods']} pods, {s['policies']} policies, {s['wired_pods']} wired"
        w, p = r["apply_wait"], r["apply_plain"]
        lines.append(f"| {label} | {w['n']} | {w['p50_ms']} ms | {w['p99_ms']} ms | {w['max_ms']} ms | "
                     f"{p['p50_ms']} ms | {p['p99_ms']} ms | {r['stale_spot_checks']} |")
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "apply_wait.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / "apply_wait.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flips", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    print(write(run(args.flips), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
