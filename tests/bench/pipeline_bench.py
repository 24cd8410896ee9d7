"""One state pipeline, before and after: agent start-to-ready, CNI ADD latency and policy
apply latency of a real standalone agent, the current tree against an older commit, side by
side in one run.

The older agent runs from a `git archive` of `--base` laid out as the installed package
(membrane/, membrane/agent, membrane/operator, membrane/bpf), first on sys.path, with this
installation's dependencies and CNI plugin (as tests/netns/test_state_upgrade.py does). Each
round runs both trees, alternating which goes first, on fresh lab nodes:

- start: exec to ready on an empty state dir (compile, load, attach);
- a store of `--pods` Pods with addresses (other nodes' peers), 50 NetworkPolicies and the
  namespace, applied at once;
- CNI ADD: `--adds` sequential ADDs through the plugin (pod netns made beforehand, so only
  the plugin's exec and the agent's work are timed);
- policy apply: `--flips` `apply --wait` of one NetworkPolicy flipping allow/deny (request to
  enforced);
- restart: stop, then exec to ready again on that state (restore: store, endpoints, maps).

Writes bench-results/pipeline-bench.{json,md}: medians per tree and new/base ratios. The
machine is shared and noisy: only the ratios within one run mean something.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from membrane.ctl.client import request
from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode

from .stats import median, percentile

REPO = Path(__file__).resolve().parents[2]
LAYOUT = {"membrane": "membrane", "agent": "membrane/agent", "operator": "membrane/operator", "bpf": "membrane/bpf"}
RUN_OLD = ("import sys; sys.path.insert(0, {root!r}); sys.argv = sys.argv[1:]; "
           "from membrane.agent.main import main; sys.exit(main())")


def log(msg: str) -> None:
    print(f"[pipeline-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def old_tree(rev: str, dest: Path) -> Path:
    root = dest / "base"
    root.mkdir(parents=True)
    for src, dst in LAYOUT.items():
        done = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, src],
                              capture_output=True, timeout=60, check=True)
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
            tar.extractall(dest / "extract")  # our own history
        shutil.move(str(dest / "extract" / src), root / dst)
    return root


def _pod(name: str, app: str, ip: str | None = None) -> dict[str, Any]:
    status = {"status": {"podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.0.2.9"}} if ip else {}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"nodeName": "peer" if ip else "", "containers": [{"name": "c", "image": "i"}]}, **status}


def _policy(name: str, app: str, allow: bool, port: int = 80) -> dict[str, Any]:
    rules = [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": port}]}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                     "ingress": rules if allow else []}}


def one_round(tag: str, wrapper: list[str], pods: int, adds: int, flips: int) -> dict[str, Any]:
    node = LabNode(f"pb{os.getpid() % 1000}{tag}", pod_cidr="10.202.0.0/16", prefix="mbbench", wrapper=wrapper)
    node.create()
    made: list[str] = []
    try:
        began = time.perf_counter()
        node.start_agent(timeout=120)
        start = time.perf_counter() - began
        objects: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                                         _pod("web", "web"), _pod("db", "db")]
        objects += [_pod(f"x{i}", f"app{i % 50}", f"10.99.{i // 250}.{i % 250 + 1}") for i in range(pods)]
        objects += [_policy(f"p{i}", f"app{i % 50}", True, 1000 + i) for i in range(50)]
        request("apply", node.socket, timeout=600, objects=objects)
        add_seconds = []
        for i in range(adds):
            name = f"a{i}"
            path = netns.create(f"{node.netns}-{name}")
            made.append(f"{node.netns}-{name}")
            args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={'web' if i == 0 else 'db' if i == 1 else name}"
            began = time.perf_counter()
            code, result, raw = node.cni("ADD", f"c{i}", str(path), "eth0", args)
            add_seconds.append(time.perf_counter() - began)
            if code != 0 or result is None:
                raise RuntimeError(f"CNI ADD {name} failed ({code}): {raw}")
        apply_seconds = []
        for rep in range(flips):
            began = time.perf_counter()
            request("apply", node.socket, objects=[_policy("db", "db", rep % 2 == 0)], wait=True, timeout_seconds=30)
            apply_seconds.append(time.perf_counter() - began)
        node.stop_agent()
        began = time.perf_counter()
        node.start_agent(timeout=120)
        restart = time.perf_counter() - began
        return {"start_s": start, "restart_s": restart, "add_ms": [s * 1000 for s in add_seconds],
                "apply_ms": [s * 1000 for s in apply_seconds]}
    finally:
        node.stop_agent()
        for pod_ns in made:  # the agent is gone: its veths go with the pod namespaces
            netns.delete(pod_ns)
        node.destroy()


def run(base: str, rounds: int, pods: int, adds: int, flips: int) -> dict[str, Any]:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    samples: dict[str, dict[str, list[float]]] = {t: {"start_s": [], "restart_s": [], "add_ms": [], "apply_ms": []}
                                                  for t in ("base", "new")}
    with tempfile.TemporaryDirectory(prefix="mbbench-pipeline-") as tmp:
        root = old_tree(base, Path(tmp))
        wrappers = {"base": [sys.executable, "-c", RUN_OLD.format(root=str(root))], "new": []}
        for r in range(rounds):
            for tree in (("base", "new") if r % 2 == 0 else ("new", "base")):
                log(f"round {r + 1}/{rounds}: {tree}")
                got = one_round(f"{tree[0]}{r}", wrappers[tree], pods, adds, flips)
                for key, value in got.items():
                    samples[tree][key] += value if isinstance(value, list) else [value]
    summary: dict[str, Any] = {}
    for key in ("start_s", "restart_s", "add_ms", "apply_ms"):
        b, n = median(samples["base"][key]) or 0.0, median(samples["new"][key]) or 0.0
        summary[key] = {"base_p50": round(b, 4), "new_p50": round(n, 4), "ratio": round(n / b, 3) if b else None,
                        "base_p99": round(percentile(samples["base"][key], 99) or 0, 4),
                        "new_p99": round(percentile(samples["new"][key], 99) or 0, 4),
                        "n": len(samples["new"][key])}
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3], "base": base, "new": head,
            "rounds": rounds, "store_pods": pods + 2, "adds": adds, "flips": flips,
            "summary": summary, "samples": samples}


def markdown(r: dict[str, Any]) -> str:
    names = {"start_s": "agent start to ready, empty state (s)", "restart_s": "agent restart to ready, with state (s)",
             "add_ms": "CNI ADD through the plugin (ms)", "apply_ms": "apply --wait, one policy flip (ms)"}
    lines = ["# State pipeline: before and after (agent start, CNI ADD, policy apply)", "",
             f"{r['date']}, {r['cores']} cores, load at start {' '.join(r['loadavg_at_start'])}: a shared, noisy "
             "machine, compare within this run only.", "",
             f"base = `{r['base']}` (the older tree, given with --base), new = `{r['new']}`; "
             f"{r['rounds']} rounds, the trees alternating; standalone agent, store of {r['store_pods']} Pods and "
             f"50 NetworkPolicies, {r['adds']} sequential ADDs and {r['flips']} `apply --wait` flips per round "
             "(`python -m tests.bench.pipeline_bench`).", "",
             "| measure | samples per tree | base p50 | new p50 | new/base | base p99 | new p99 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in names.items():
        s = r["summary"][key]
        lines.append(f"| {label} | {s['n']} | {s['base_p50']} | {s['new_p50']} | {s['ratio']} | "
                     f"{s['base_p99']} | {s['new_p99']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the older commit to compare with")
    ap.add_argument("--rounds", type=int, default=4,
                    help="even, so each tree runs first as often (right after the other's teardown is slower)")
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--adds", type=int, default=20)
    ap.add_argument("--flips", type=int, default=40)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    results = run(args.base, args.rounds, args.pods, args.adds, args.flips)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipeline-bench.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.out / "pipeline-bench.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
