"""Object store before/after: `membranectl apply` of 1 and of 100 objects and CNI ADD latency,
the JSON snapshot + journal store (an earlier commit's agent) vs the store in state.db (this
installation's), side by side on the same machine in one run (A,B,A,B... rounds).

    python -m tests.bench.object_store_bench [--before COMMIT] [--after COMMIT]

Each side's agent runs from a `git archive` of its commit laid out as the installed package,
first on sys.path (as tests/netns/test_state_upgrade.py does), with this installation's
dependencies and CNI plugin (`--after` left out: this installation). The defaults are the
commits just before and with the change, so nothing else differs. Each round, per side, in its
own lab node: agent start on an empty state dir,
`--applies` applies of one Namespace (a label changed each time: one object stored per batch),
`--applies` applies of 100 Namespaces (all relabelled: 100 objects per batch), `--pods`
sequential CNI ADDs. Every batch is durable before its answer on both sides (the journal line
fsynced; the state.db transaction with synchronous=FULL). Then the store alone, in-process
(each side's ObjectStore, no agent, no API), and one state.db commit with FULL vs NORMAL: the
fsync's own cost. Writes bench-results/object-store.{json,md}.
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

REPO = Path(__file__).resolve().parents[2]
BEFORE = "2018417"  # main just before the object store and cluster cache moved into state.db
AFTER = "3411da8"  # main with them moved (and nothing else changed)
LAYOUT = {"membrane": "membrane", "agent": "membrane/agent", "operator": "membrane/operator", "bpf": "membrane/bpf"}
RUN_OLD = ("import sys; sys.path.insert(0, {root!r}); sys.argv = sys.argv[1:]; "
           "from membrane.agent.main import main; sys.exit(main())")


def old_tree(commit: str, into: Path) -> Path:
    root = into / commit
    root.mkdir(parents=True)
    for src, dst in LAYOUT.items():
        done = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, src],
                              capture_output=True, timeout=60, check=True)
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
            tar.extractall(into / "extract")  # our own history
        shutil.move(str(into / "extract" / src), root / dst)
    shutil.rmtree(into / "extract")
    return root


def namespaces(count: int, round_: int) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"bench{i}", "labels": {"v": f"r{round_}".replace("-", "m")}}}
            for i in range(count)]


def side(tag: str, wrapper: list[str], applies: int, pods: int) -> dict[str, list[float]]:
    from membrane_testkit.lab import netns
    from membrane_testkit.lab.node import LabNode

    node = LabNode(f"os{os.getpid() % 10000}{tag}", pod_cidr="10.212.0.0/24", prefix="mbbench", wrapper=wrapper)
    out: dict[str, list[float]] = {"apply1_ms": [], "apply100_ms": [], "add_ms": []}
    try:
        node.create()
        node.start_agent()
        for key, count in (("apply1_ms", 1), ("apply100_ms", 100)):
            node.api("apply", objects=namespaces(count, -1))  # created once; then each apply changes all
            for i in range(applies):
                start = time.perf_counter()
                done = node.api("apply", objects=namespaces(count, i))
                out[key].append((time.perf_counter() - start) * 1000)
                assert {d["action"] for d in done} == {"configured"}, done[:2]
        for i in range(pods):
            path = netns.create(f"{node.netns}-p{i}")
            start = time.perf_counter()
            code, _, raw = node.cni("ADD", f"c{i}", str(path), args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p{i}")
            out["add_ms"].append((time.perf_counter() - start) * 1000)
            assert code == 0, raw
    finally:
        for i in range(pods):
            netns.delete(f"{node.netns}-p{i}")
        node.destroy()
    return out


STORE_ALONE = """
import json, sys, tempfile, time
from pathlib import Path
if sys.argv[1]:
    sys.path.insert(0, sys.argv[1])
from membrane.agent import object_store
repeats = int(sys.argv[3])
def namespaces(count, r):
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"bench{i}", "labels": {"v": f"r{r}"}}}
            for i in range(count)]
out = {}
with tempfile.TemporaryDirectory(dir=sys.argv[2]) as tmp:
    new = hasattr(object_store, "SEQ_META")  # state.db; else the JSON snapshot + journal
    store = object_store.ObjectStore(Path(tmp) if new else Path(tmp) / "objects.json")
    store.load()
    for count in (1, 100):
        store.apply(namespaces(count, -1))
        samples = []
        for r in range(repeats):
            start = time.perf_counter()
            store.apply(namespaces(count, r))
            samples.append((time.perf_counter() - start) * 1000)
        samples.sort()
        out[f"store{count}_ms"] = samples[len(samples) // 2]
print(json.dumps(out))
"""


def store_alone(root: str, where: Path, repeats: int) -> dict[str, float]:
    """One side's ObjectStore in a process of its own (its tree first on sys.path)."""
    done = subprocess.run([sys.executable, "-c", STORE_ALONE, root, str(where), str(repeats)],
                          capture_output=True, text=True, timeout=600, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def commit_costs(state: Path, repeats: int) -> dict[str, float]:
    """The store alone (no agent, no API): one batch of 1 or 100 object rows, committed with
    synchronous=FULL (what a store batch uses) vs NORMAL (no fsync): the fsync's cost."""
    from membrane.agent.state_storing import open_state

    db = open_state(state).db
    out: dict[str, float] = {}
    try:
        for count in (1, 100):
            for durable in (True, False):
                samples = []
                for i in range(repeats):
                    start = time.perf_counter()
                    with db.transaction(durable=durable):
                        for obj in namespaces(count, i):
                            db.put_object(("Namespace", "", obj["metadata"]["name"]), obj)
                        db.put_meta("objects-seq", str(i))
                    samples.append((time.perf_counter() - start) * 1000)
                out[f"commit{count}_{'full' if durable else 'normal'}_ms"] = med(samples)
    finally:
        db.close()
    return out


def med(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default=BEFORE, help="commit of the agent with the JSON object store")
    ap.add_argument("--after", default=AFTER, help="commit of the agent with the store in state.db ('': this one)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--applies", type=int, default=20)
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    runs: dict[str, list[dict[str, list[float]]]] = {"before": [], "after": []}
    alone: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="mbbench-objstore-") as tmp:
        roots = {"before": str(old_tree(args.before, Path(tmp))),
                 "after": str(old_tree(args.after, Path(tmp))) if args.after else ""}
        wrappers = {name: [sys.executable, "-c", RUN_OLD.format(root=root)] if root else []
                    for name, root in roots.items()}
        for rnd in range(args.rounds):
            for name, wrapper in wrappers.items():
                runs[name].append(side(name[0], wrapper, args.applies, args.pods))
                print(f"[object-store bench] round {rnd} {name} done", file=sys.stderr, flush=True)
        from membrane_testkit.lab.node import LAB_DIR  # the lab agents' state dirs: the same file system

        LAB_DIR.mkdir(parents=True, exist_ok=True)
        for _ in range(args.rounds):
            for name, root in roots.items():
                alone[name].append(store_alone(root, LAB_DIR, args.applies))
        with tempfile.TemporaryDirectory(dir=LAB_DIR, prefix="mbbench-commit-") as where:
            commits = commit_costs(Path(where), args.applies * args.rounds)
    keys = ("apply1_ms", "apply100_ms", "add_ms")
    summary: dict[str, dict[str, float]] = {
        name: {key: med([x for r in rs for x in r[key]]) for key in keys} for name, rs in runs.items()}
    for name, rs in alone.items():
        summary[name].update({key: med([r[key] for r in rs]) for key in ("store1_ms", "store100_ms")})
    args.out.mkdir(exist_ok=True)
    (args.out / "object-store.json").write_text(json.dumps({"before": args.before, "after": args.after or "installed",
                                                            "summary": summary, "commits": commits, "runs": runs},
                                                           indent=1))
    labels = {"apply1_ms": "apply of 1 object, p50 (ms)", "apply100_ms": "apply of 100 objects, p50 (ms)",
              "add_ms": "CNI ADD sequential, p50 (ms)",
              "store1_ms": "the store alone: a batch of 1 object, p50 (ms)",
              "store100_ms": "the store alone: a batch of 100 objects, p50 (ms)"}
    lines = ["# Object store: JSON snapshot + journal (before) vs state.db (after)", "",
             f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, load "
             f"{' '.join(open('/proc/loadavg').read().split()[:3])} (shared, noisy machine). Before: {args.before[:10]}, "
             f"after: {(args.after or 'this installation')[:10]}. "
             f"{args.rounds} interleaved rounds; per round and side {args.applies} applies of each size through the "
             f"agent's API socket and {args.pods} ADDs through membrane-cni; medians over all samples.", "",
             "| measure | before | after | after / before |", "|---|---|---|---|"]
    for key in (*keys, "store1_ms", "store100_ms"):
        b, a = summary["before"][key], summary["after"][key]
        lines.append(f"| {labels[key]} | {b:.2f} | {a:.2f} | {a / b:.2f}x |")
    lines += ["", "The store alone (state.db, no agent): median commit of one batch, the fsync's cost.", "",
              "| batch | synchronous=FULL (shipped for store batches) | NORMAL (no fsync) | FULL / NORMAL |",
              "|---|---|---|---|"]
    for count in (1, 100):
        full, normal = commits[f"commit{count}_full_ms"], commits[f"commit{count}_normal_ms"]
        lines.append(f"| {count} object{'s' if count > 1 else ''} (ms) | {full:.3f} | {normal:.3f} | {full / normal:.1f}x |")
    (args.out / "object-store.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
