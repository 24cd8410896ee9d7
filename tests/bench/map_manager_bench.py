"""Map manager benchmark: policy apply latency and agent start-to-ready, two builds side by side.

Run with root: `python -m tests.bench.map_manager_bench BASE_TREE NEW_TREE` (each tree with its
own `make install` venv). Every measurement runs in a fresh process of the tree's own venv,
alternating between the trees (noisy shared machine: compare ratios of medians, in one run):

- `pure`: the agent's policy manager with in-memory maps, 1,000 policies x 10,000 pods, 20
  local endpoints (`policy_scale.agent`): first apply, one policy change + apply, no-op apply;
- `maps`: the policy manager on a real loaded datapath (real pinned maps, real syscalls):
  2,000 pods, 200 policies, 20 local endpoints: first apply, one policy change + apply;
- `ready`: a lab node's agent, exec to ready: a cold start, then a restart over pinned maps
  holding 500 pods and 100 policies (restore: resync against the kernel maps).

Results: bench-results/map-manager.md (and .json).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any


def _maps() -> dict[str, Any]:
    from membrane.agent.datapath_port import DatapathPort
    from membrane.agent.policy_syncing import LocalEndpoint, PolicyManager
    from membrane.k8s_models import ObjectRef, parse_object
    from membrane_testkit.label_identities import LabelIdentities
    from tests.bench import policy_scale as ps

    pin_root = Path(f"/sys/fs/bpf/mbt-mmbench-{os.getpid()}")
    port = DatapathPort(pin_root)
    port.load()
    out: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="mbt-mmbench-"):
            mgr = PolicyManager(LabelIdentities(), port, lambda _k, _i: None, list)
            for n in range(ps.NAMESPACES):
                mgr.on_namespace(f"ns{n}", parse_object(ps.namespace_obj(n)))  # type: ignore[arg-type]
            pods = [parse_object(ps.pod_obj(i)) for i in range(2000)]
            for i, obj in enumerate(pods):
                mgr.on_pod(ObjectRef(f"ns{i % ps.NAMESPACES}", f"p{i}"), obj)  # type: ignore[arg-type]
            for j in range(200):
                mgr.on_policy(ObjectRef(f"ns{j % ps.NAMESPACES}", f"pol{j}"), parse_object(ps.policy_obj(j)))  # type: ignore[arg-type]
            for k in range(20):
                mgr.on_endpoint(ObjectRef(f"ns{k % ps.NAMESPACES}", f"p{k}"),
                                LocalEndpoint(f"c{k}", k + 1, IPv4Address(pods[k].ips[0])))  # type: ignore[attr-defined]
            started = time.perf_counter()
            out["first_apply"] = mgr.apply()
            out["first_apply_ms"] = (time.perf_counter() - started) * 1000
            samples = []
            for step in range(9):
                obj = parse_object(ps.changed_policy_obj(step))
                started = time.perf_counter()
                mgr.on_policy(ObjectRef("ns0", "pol0"), obj)  # type: ignore[arg-type]
                out["one_change"] = mgr.apply()
                samples.append((time.perf_counter() - started) * 1000)
            out["one_change_ms"] = statistics.median(samples)
            started = time.perf_counter()
            mgr.resync()
            out["resync_ms"] = (time.perf_counter() - started) * 1000
    finally:
        port.close()
        port.dp.unpin()
    return out


def _ready() -> dict[str, Any]:
    from membrane_testkit.lab.node import LabNode
    from tests.bench import policy_scale as ps

    node = LabNode(f"mmb{os.getpid() % 100000}", pod_cidr="10.214.0.0/24")
    out: dict[str, Any] = {}
    try:
        node.create()
        started = time.perf_counter()
        node.start_agent()
        out["cold_ready_s"] = time.perf_counter() - started
        objects = [ps.namespace_obj(n) for n in range(ps.NAMESPACES)]
        objects += [ps.pod_obj(i) for i in range(500)] + [ps.policy_obj(j) for j in range(100)]
        for k in range(0, len(objects), 200):
            node.api("apply", objects=objects[k:k + 200])
        for name in ("a", "b"):
            node.add_pod(name)
        node.stop_agent()
        started = time.perf_counter()
        node.start_agent()
        out["restart_ready_s"] = time.perf_counter() - started
    finally:
        node.destroy()
    return out


def _run(tree: Path, part: str) -> dict[str, Any]:
    proc = subprocess.run([str(tree / ".venv/bin/python"), "-m", "tests.bench.map_manager_bench", "--part", part],
                          cwd=tree, capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{part} in {tree} failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _pure() -> dict[str, Any]:
    from tests.bench import policy_scale
    return policy_scale.agent()


PARTS = {"pure": _pure, "maps": _maps, "ready": _ready}
METRICS = {"pure": ("first_apply_s", "one_change_ms", "noop_apply_ms"),
           "maps": ("first_apply_ms", "one_change_ms", "resync_ms"),
           "ready": ("cold_ready_s", "restart_ready_s")}


def compare(base: Path, new: Path, reps: int) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {p: {"base": [], "new": []} for p in PARTS}
    for rep in range(reps):
        for part in PARTS:
            for label, tree in (("base", base), ("new", new)) if rep % 2 == 0 else (("new", new), ("base", base)):
                print(f"rep {rep} {part} {label}", file=sys.stderr, flush=True)
                runs[part][label].append(_run(tree, part))
    table = []
    for part, names in METRICS.items():
        for name in names:
            b = statistics.median(r[name] for r in runs[part]["base"])
            n = statistics.median(r[name] for r in runs[part]["new"])
            table.append({"part": part, "metric": name, "base": b, "new": n, "ratio": n / b if b else None})
    return {"reps": reps, "base": str(base), "new": str(new), "table": table, "runs": runs,
            "load": os.getloadavg()}


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Map manager: before / after", "",
             f"Medians of {results['reps']} alternating runs, each in a fresh process; machine shared "
             f"(load {results['load'][0]:.2f}), compare the ratios. base = main before the map manager, "
             "new = with it (`python -m tests.bench.map_manager_bench BASE NEW`).", "",
             "| part | metric | base | new | new/base |", "|---|---|---|---|---|"]
    for row in results["table"]:
        lines.append(f"| {row['part']} | {row['metric']} | {row['base']:.3f} | {row['new']:.3f} | "
                     f"{row['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--part"]:
        print(json.dumps(PARTS[argv[1]]()))
        return 0
    base, new = Path(argv[0]), Path(argv[1])
    reps = int(argv[2]) if len(argv) > 2 else 3
    results = compare(base, new, reps)
    out = new / "bench-results"
    (out / "map-manager.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "map-manager.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
