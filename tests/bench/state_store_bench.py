"""State store before/after: agent start-to-ready and CNI ADD/DEL latency of two installations,
side by side on the same machine in one run (A,B,A,B... rounds).

    python -m tests.bench.state_store_bench --before /path/to/old/.venv/bin/python

Each round, per installation, in its own lab node: agent start on an empty state dir (exec to
ready), `--pods` sequential ADDs through the real membrane-cni, a restart with those pods
(exec to ready: restore included), their DELs. The worker (`--worker`) runs under the
installation's own interpreter, so each side runs its own agent and plugin. Writes
bench-results/sqlite-store.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def ready_less_compile(log: Path) -> float:
    """The agent's own bootstrap time minus its BPF compile (the part the state store is in;
    compiling dominates and varies most on a loaded machine)."""
    line = [x for x in log.read_text().splitlines() if '"agent ready"' in x][-1]
    fields = json.loads(line)
    return float(fields["bootstrap_seconds"]) - float(fields["compile_seconds"])


def worker(tag: str, pods: int) -> dict[str, Any]:
    from membrane_testkit.lab import netns
    from membrane_testkit.lab.node import LabNode

    node = LabNode(f"ss{os.getpid() % 10000}{tag}", pod_cidr="10.211.0.0/24", prefix="mbbench")
    out: dict[str, Any] = {"add_ms": [], "del_ms": []}
    try:
        node.create()
        start = time.perf_counter()
        node.start_agent()
        out["ready_empty_s"] = time.perf_counter() - start
        out["bootstrap_empty_s"] = ready_less_compile(node.log_path)
        for i in range(pods):
            path = netns.create(f"{node.netns}-p{i}")
            start = time.perf_counter()
            code, _, raw = node.cni("ADD", f"c{i}", str(path), args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p{i}")
            out["add_ms"].append((time.perf_counter() - start) * 1000)
            assert code == 0, raw
        # A burst: `pods` ADDs at once (their commits share one store; the JSON files did not).
        paths = [netns.create(f"{node.netns}-q{i}") for i in range(pods)]
        barrier = threading.Barrier(pods)
        burst: list[float] = []

        def one(i: int) -> None:
            barrier.wait()
            began = time.perf_counter()
            code, _, raw = node.cni("ADD", f"q{i}", str(paths[i]), args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=q{i}")
            burst.append((time.perf_counter() - began) * 1000)
            assert code == 0, raw

        threads = [threading.Thread(target=one, args=(i,)) for i in range(pods)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out["burst_add_ms"] = burst
        for i in range(pods):
            node.cni("DEL", f"q{i}", str(paths[i]))
            netns.delete(f"{node.netns}-q{i}")
        node.stop_agent()
        start = time.perf_counter()
        node.start_agent()
        out["ready_restore_s"] = time.perf_counter() - start
        out["bootstrap_restore_s"] = ready_less_compile(node.log_path)
        assert len(node.api("endpoint.list")) == pods
        for i in range(pods):
            start = time.perf_counter()
            code, _, raw = node.cni("DEL", f"c{i}", str(netns.NETNS_DIR / f"{node.netns}-p{i}"))
            out["del_ms"].append((time.perf_counter() - start) * 1000)
            assert code == 0, raw
            netns.delete(f"{node.netns}-p{i}")
    finally:
        for i in range(pods):
            netns.delete(f"{node.netns}-p{i}")
            netns.delete(f"{node.netns}-q{i}")
        node.destroy()
    return out


def med(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="python of the installation to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.pods)))
        return 0
    sides = {"before": args.before, "after": sys.executable}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for rnd in range(args.rounds):
        for name, python in sides.items():
            done = subprocess.run([python, str(Path(__file__).resolve()), "--worker", name[0], "--pods", str(args.pods)],
                                  capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise SystemExit(f"{name} round {rnd}: {done.stderr[-2000:]}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"[state-store bench] round {rnd} {name} done", file=sys.stderr, flush=True)
    summary = {name: {"add_p50_ms": med([x for r in rs for x in r["add_ms"]]),
                      "burst_add_p50_ms": med([x for r in rs for x in r["burst_add_ms"]]),
                      "burst_add_max_ms": med([max(r["burst_add_ms"]) for r in rs]),
                      "del_p50_ms": med([x for r in rs for x in r["del_ms"]]),
                      "ready_empty_s": med([r["ready_empty_s"] for r in rs]),
                      "ready_restore_s": med([r["ready_restore_s"] for r in rs]),
                      "bootstrap_empty_s": med([r["bootstrap_empty_s"] for r in rs]),
                      "bootstrap_restore_s": med([r["bootstrap_restore_s"] for r in rs])} for name, rs in runs.items()}
    args.out.mkdir(exist_ok=True)
    (args.out / "sqlite-store.json").write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    rows = [("CNI ADD sequential p50 (ms)", "add_p50_ms"),
            (f"CNI ADD, {args.pods} at once: p50 (ms)", "burst_add_p50_ms"),
            (f"CNI ADD, {args.pods} at once: slowest (ms, median over rounds)", "burst_add_max_ms"), ("CNI DEL p50 (ms)", "del_p50_ms"),
            ("start to ready, empty state (s)", "ready_empty_s"),
            (f"start to ready, {args.pods} pods restored (s)", "ready_restore_s"),
            ("start to ready less BPF compile, empty state (s)", "bootstrap_empty_s"),
            (f"start to ready less BPF compile, {args.pods} pods restored (s)", "bootstrap_restore_s")]
    lines = ["# State store: JSON files (before) vs SQLite (after)", "",
             f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, load {' '.join(open('/proc/loadavg').read().split()[:3])}"
             f" (shared, noisy machine). {args.rounds} interleaved rounds, {args.pods} sequential ADDs/DELs each through "
             "membrane-cni; medians over all samples.", "",
             "| measure | before | after | after / before |", "|---|---|---|---|"]
    for label, key in rows:
        b, a = summary["before"][key], summary["after"][key]
        lines.append(f"| {label} | {b:.2f} | {a:.2f} | {a / b:.2f}x |")
    (args.out / "sqlite-store.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
