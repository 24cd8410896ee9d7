"""Datapath compile time: clang (through bcc) and verifier time per program family, trees side by side.

What an agent start pays before its programs are attached: `BPF(text=...)` on the flattened entry
files plus the shared-constant `_Static_assert`s (compile: bcc's rewriting, clang, LLVM), then
`load_func` of each program (the kernel's verifier). Each measurement is a fresh Python process
running one tree's own loader (its entry files, cflags and asserts), as an agent start does;
`--base` trees come from `git archive`, laid out as the installed package (as pipeline_bench does).
Trees and families are interleaved per round; medians of CPU time (the process's user+system
time: steadier than wall time on a shared machine) and of wall time are reported, with new/base
ratios. Families a tree does not have (b4535fb had lxc and overlay only) are left out for it.

Run as root from the repo root: `python -m tests.bench.compile_time_bench --base b4535fb`
(also `python -m tests.bench.run --only compile_time`). Writes `bench-results/compile-time.{json,md}`.
Creates only a pin root /sys/fs/bpf/mbt-compile-<pid>-..., removed at the end of each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .pipeline_bench import old_tree
from .stats import median, ratio

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("lxc,overlay", "lxc", "overlay", "host", "sock", "xdp", "lxc,overlay,host,sock,xdp")

# Runs in a fresh interpreter with the measured tree first on sys.path (nothing for this tree).
# Prints one JSON line: compile and verify seconds (CPU and wall), or {"skipped": reason}.
WORKER = r"""
import json, os, shutil, sys, time, uuid
from pathlib import Path
if {root!r}:
    sys.path.insert(0, {root!r})
from bcc import BPF
from membrane.agent.datapath import loading
from membrane.agent.datapath.flattening import flatten_sources
from membrane.agent.datapath.shared_constants import static_asserts

families = {families!r}.split(",")
entries = [f"bpf_{{f}}.c" for f in families]
if any(e not in loading.ENTRY_FILES for e in entries):
    print(json.dumps({{"skipped": "family not in this tree"}}))
    sys.exit(0)
pin = Path("/sys/fs/bpf") / f"mbt-compile-{{os.getpid()}}-{{uuid.uuid4().hex[:8]}}"
dp = loading.Datapath(pin)
text = flatten_sources([dp.bpf_dir / e for e in entries]) + "\n" + static_asserts()
programs = [(n, BPF.SCHED_CLS, None) for n in loading.PROGRAMS]
programs += [(n, BPF.CGROUP_SOCK_ADDR, a) for n, a in getattr(loading, "SOCK_PROGRAMS", {{}}).items()]
programs += [(n, BPF.XDP, None) for n in getattr(loading, "XDP_PROGRAMS", ())]
try:
    c0, w0 = time.process_time(), time.perf_counter()
    bpf = BPF(text=text.encode(), cflags=dp._cflags())
    c1, w1 = time.process_time(), time.perf_counter()
    loaded = 0
    for name, kind, attach in programs:
        try:
            bpf.load_func(name.encode(), kind, **({{"attach_type": attach}} if attach is not None else {{}}))
            loaded += 1
        except Exception as exc:
            if "Unknown program" not in str(exc):
                raise
    c2, w2 = time.process_time(), time.perf_counter()
    bpf.cleanup()
finally:
    shutil.rmtree(pin, ignore_errors=True)
print(json.dumps({{"compile_cpu": c1 - c0, "compile_wall": w1 - w0, "verify_cpu": c2 - c1,
                  "verify_wall": w2 - w1, "programs": loaded}}))
"""


def log(msg: str) -> None:
    print(f"[compile-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(root: Path | None, families: str) -> dict[str, Any]:
    code = WORKER.format(root=str(root) if root else "", families=families)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"compiling {families} in {root or 'this tree'} failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(bases: list[str], rounds: int, families: tuple[str, ...] = FAMILIES) -> dict[str, Any]:
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    keys = ("compile_cpu", "compile_wall", "verify_cpu", "verify_wall")
    with tempfile.TemporaryDirectory(prefix="mbbench-compile-") as tmp:
        trees: dict[str, Path | None] = {base: old_tree(base, Path(tmp) / base) for base in bases}
        trees["new"] = None
        samples: dict[str, dict[str, dict[str, list[float]]]] = {
            t: {f: {k: [] for k in keys} for f in families} for t in trees}
        programs: dict[str, dict[str, int]] = {t: {} for t in trees}
        for r in range(rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for fam in families:
                for tree in order:
                    got = measure(trees[tree], fam)
                    if "skipped" in got:
                        continue
                    programs[tree][fam] = got["programs"]
                    for k in keys:
                        samples[tree][fam][k].append(got[k])
            log(f"round {r + 1}/{rounds} done")
    summary: dict[str, Any] = {}
    for fam in families:
        row: dict[str, Any] = {}
        for tree in trees:
            row[tree] = {k: median(samples[tree][fam][k]) for k in keys} | {"programs": programs[tree].get(fam)}
        for base in bases:
            row[f"new/{base}"] = {k: ratio(row["new"][k], row[base][k]) for k in keys}
        summary[fam] = row
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cores": os.cpu_count(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3], "bases": bases, "new": head,
            "rounds": rounds, "summary": summary, "samples": samples}


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(r: dict[str, Any]) -> str:
    trees = [*r["bases"], "new"]
    lines = ["# Datapath compile and verify time per program family", "",
             f"{r['date']}, {r['cores']} cores, load at start {' '.join(r['loadavg_at_start'])}: a shared, noisy "
             "machine, compare within this run only.", "",
             f"Trees: {', '.join(f'`{b}`' for b in r['bases'])} and new = `{r['new']}`; {r['rounds']} rounds, "
             "trees interleaved, one fresh process per measurement, each tree with its own loader (entry "
             "files, cflags, asserts). Compile = `BPF(text=...)` (bcc rewriting, clang, LLVM); verify = "
             "`load_func` of every program in the unit (kernel verifier). Medians; CPU = the process's "
             "user+system time (`python -m tests.bench.compile_time_bench`).", "",
             "| families | tree | compile CPU s | compile wall s | verify CPU s | verify wall s | programs "
             "| compile CPU new/tree |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for fam, row in r["summary"].items():
        for t in trees:
            m = row[t]
            if m["compile_cpu"] is None:
                continue
            vs = "" if t == "new" else _s(row[f"new/{t}"]["compile_cpu"])
            lines.append(f"| {fam.replace(',', '+')} | {t} | {_s(m['compile_cpu'])} | {_s(m['compile_wall'])} | "
                         f"{_s(m['verify_cpu'])} | {_s(m['verify_wall'])} | {m['programs']} | {vs} |")
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "compile-time.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / "compile-time.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", action="append", default=None,
                    help="an older commit to compare with (repeatable; default b4535fb)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--families", default=None, help="groups separated by ';', e.g. 'lxc,overlay;host'")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (bpffs pins, loading programs)", file=sys.stderr)
        return 2
    families = tuple(args.families.split(";")) if args.families else FAMILIES
    print(write(run(args.base or ["b4535fb"], args.rounds, families), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
