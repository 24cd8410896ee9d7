"""Foundation benchmark: membrane vs the reference bridge CNI vs a bare veth, same node.

Run from the repo root as root: `python -m tests.bench.run` (or `make bench`). Writes
`bench-results/foundation.json` and `bench-results/foundation.md`. Everything it creates is a
`mbbench-*` network namespace (plus the lab agent's work dirs), removed at the end even on
error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from membrane_testkit.lab import netns

from . import cni_timing, measuring, report
from .cni_timing import CniTimer, Timings
from .setups import PREFIX, BridgeReference, DirectVeth, Membrane, Setup, rss_kib
from .stats import median, percentile


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_facts() -> dict[str, Any]:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown")
    version = lambda cmd: subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0].strip()  # noqa: E731
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "kernel": platform.release(), "cores": os.cpu_count(), "cpu": cpu,
            "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
            "python": platform.python_version(), "sockperf": version(["sockperf", "--version"]),
            "iperf3": version(["iperf3", "--version"]),
            "bridge_nf_call_iptables": _read("/proc/sys/net/bridge/bridge-nf-call-iptables")}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def timing_summary(t: Timings) -> dict[str, Any]:
    ms = [s * 1000 for s in t.seconds]
    return {"n": len(ms), "failures": len(t.errors), "p50_ms": median(ms), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms) if ms else None, "first_error": t.errors[0] if t.errors else None,
            "samples_ms": [round(x, 2) for x in ms]}


def build(setups: list[Setup]) -> dict[str, str | None]:
    """Create each setup and check the client reaches the server over TCP; returns name -> error (None = ok)."""
    status: dict[str, str | None] = {}
    for s in setups:
        log(f"creating {s.name}")
        try:
            s.create()
            measuring.latency(s.server, s.client, seconds=1)  # reachability check and warm-up
            status[s.name] = None
        except Exception as exc:  # noqa: BLE001 - the other setups still run
            status[s.name] = f"{type(exc).__name__}: {exc}"[:2000]
            log(f"{s.name} unavailable: {status[s.name]}")
    return status


def traffic(setups: list[Setup], reps: int, seconds: int) -> dict[str, dict[str, Any]]:
    """Latency then throughput, each repetition interleaving the setups (A,B,C,A,B,C...)."""
    out: dict[str, dict[str, Any]] = {s.name: {"latency": [], "throughput": [], "errors": []} for s in setups}
    for rep in range(reps):
        for kind in ("latency", "throughput"):
            for s in setups:
                log(f"rep {rep + 1}/{reps} {kind} {s.name}")
                try:
                    fn = measuring.latency if kind == "latency" else measuring.throughput
                    out[s.name][kind].append(vars(fn(s.server, s.client, seconds)))
                except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                    out[s.name]["errors"].append(f"{kind}: {exc}"[:500])
    for data in out.values():
        data["latency_p50_us"] = median([x["p50_us"] for x in data["latency"]])
        data["latency_avg_us"] = median([x["avg_us"] for x in data["latency"]])
        data["latency_p99_us"] = median([x["p99_us"] for x in data["latency"]])
        data["throughput_gbps"] = median([x["gbps"] for x in data["throughput"]])
        data["retransmits"] = median([x["retransmits"] for x in data["throughput"]])
    return out


def cni(bridge: BridgeReference, membrane: Membrane | None, seq: int, conc: int) -> dict[str, Any]:
    """Plugin start-up, ADD sequential/concurrent, DEL, and agent RSS with pods."""
    out: dict[str, Any] = {}
    commands = {"bridge": [f"{bridge.plugin_dir}/bridge"]}
    if membrane is not None:
        commands = {"membrane-cni": list(membrane.plugin.argv), **commands}
    log("plugin start-up (VERSION)")
    starts = cni_timing.startup(commands, 20)
    out["startup_ms"] = {k: median([x * 1000 for x in v]) for k, v in starts.items()}
    overhead = [cni_timing.time_command(["ip", "netns", "exec", bridge.node, "/bin/true"]) for _ in range(20)]
    out["ip_netns_exec_overhead_ms"] = median([x * 1000 for x in overhead])

    under_test = ([membrane.plugin] if membrane else []) + [bridge.plugin]
    timer = CniTimer()
    try:
        log(f"{seq} sequential ADDs per plugin (interleaved)")
        seq_t = timer.sequential(under_test, seq)
        out["add_sequential"] = {k: timing_summary(v) for k, v in seq_t.items()}
        if membrane is not None:
            time.sleep(1)
            out["agent_ready_s"] = membrane.ready_seconds
            out["agent_rss_kib"] = {"idle": membrane.idle_rss_kib, "loaded": rss_kib(membrane.agent_pid),
                                    "loaded_pods": len(seq_t["membrane-cni"].seconds) + 2}
        log("sequential DELs")
        out["del_sequential"] = {k: timing_summary(v) for k, v in timer.cleanup().items()}
        out["add_concurrent"] = {}
        for plugin in under_test:
            log(f"{conc} concurrent ADDs {plugin.name}")
            start = time.perf_counter()
            t = timer.concurrent(plugin, conc)
            out["add_concurrent"][plugin.name] = {**timing_summary(t), "wall_s": time.perf_counter() - start}
            timer.cleanup(plugin.name)
    finally:
        timer.cleanup()
    return out


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, judged on medians."""
    t = results["traffic"]
    get = lambda name, key: (t.get(name) or {}).get(key)  # noqa: E731
    rows = [("membrane latency / direct veth", get("membrane", "latency_p50_us"), get("direct veth", "latency_p50_us"), "<=", 1.25),
            ("membrane latency / bridge", get("membrane", "latency_p50_us"), get("bridge reference", "latency_p50_us"), "<=", 0.6),
            ("membrane throughput / bridge", get("membrane", "throughput_gbps"), get("bridge reference", "throughput_gbps"), ">=", 1.0)]
    out = []
    for name, a, b, op, limit in rows:
        value = a / b if a is not None and b else None
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out.append({"name": name, "value": value, "target": f"{op} {limit}", "met": met})
    return out


def leftovers() -> list[str]:
    return netns.listed(f"{PREFIX}-")


def _sigterm(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt


def foundation(args: argparse.Namespace) -> None:
    """membrane vs bridge vs veth: bench-results/foundation.*"""
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine_facts(), "config": vars(args) | {"out": str(args.out)}}
    veth, bridge, mb = DirectVeth(), BridgeReference(), Membrane()
    setups: list[Setup] = [mb, bridge, veth]
    try:
        status = build(setups)
        results["setups"] = {s.name: {"description": s.description, "error": status[s.name]} for s in setups}
        ready = [s for s in setups if status[s.name] is None]
        forwarded = mb.node_forwarded() if mb in ready else None
        results["traffic"] = traffic(ready, args.reps, args.seconds)
        if forwarded is not None:
            results["setups"][mb.name]["node_stack_forwarded_during_traffic"] = mb.node_forwarded() - forwarded
        if status[bridge.name] is None:
            results["cni"] = cni(bridge, mb if status[mb.name] is None else None, args.seq_pods, args.conc_pods)
    finally:
        for s in reversed(setups):
            try:
                s.destroy()
            except Exception as exc:  # noqa: BLE001
                log(f"destroy {s.name}: {exc}")
        left = leftovers()
        if left:
            log(f"WARNING: left behind: {left}")
    results["targets"] = targets(results)
    results["leftovers"] = left
    results["duration_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "foundation.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report.markdown(results)
    (args.out / "foundation.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5, help="duration of each sockperf/iperf3 run")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions of the traffic tests")
    ap.add_argument("--seq-pods", type=int, default=50)
    ap.add_argument("--conc-pods", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    ap.add_argument("--only", default="all", choices=("all", "foundation", "policy", "observability", "operator", "tls",
                                                      "cni_startup", "overlay", "kube_proxy", "apply_wait", "state_store",
                                                      "cni_startup", "overlay", "kube_proxy", "apply_wait", "state_store",
                                                      "object_store", "service_objects", "services", "nodeport",
                                                      "prefilter_propagation", "prefilter", "pipeline", "compile_time"),
                    help="run one part of the benchmark (default: all)")
    ap.add_argument("--state-store-before", metavar="PYTHON",
                    help="python of an installation with the JSON state files: compare the SQLite store with it")
    ap.add_argument("--pipeline-base", metavar="REV",
                    help="an older commit: compare agent start, CNI ADD and apply --wait with it, side by side")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    if leftovers():
        print(f"refusing to start: {PREFIX}-* namespaces exist ({leftovers()}); another run? "
              "`make clean-lab` removes leftovers of a crashed run", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    if args.only in ("all", "foundation"):
        foundation(args)
    if args.only in ("all", "policy"):
        from . import policy_bench  # rules vs latency/connection rate, engine scale, apply-to-enforced

        log("policy benchmark (0/100/10,000 rules vs iptables, 1,000 policies x 10,000 pods, apply-to-enforced)")
        print(policy_bench.write(policy_bench.run(), args.out))
    if args.only in ("all", "observability"):
        from . import observability_bench  # events on vs off, flows/s: bench-results/observability.*

        log("observability benchmark (flow events on vs off, flows per second)")
        print(observability_bench.write(observability_bench.run(args.reps, args.seconds), args.out))
    if args.only in ("all", "overlay"):
        from . import overlay_trust_bench  # from_overlay ns/packet before/after the trust rules

        log("overlay trust benchmark (from_overlay per-packet cost, before vs after the trust checks)")
        print(overlay_trust_bench.write(overlay_trust_bench.run(), args.out))
    if args.only in ("all", "kube_proxy"):
        from . import kube_proxy_coexistence_bench  # from_container ns/packet before/after the coexistence fix

        log("kube-proxy coexistence benchmark (from_container per-packet cost, before vs after)")
        print(kube_proxy_coexistence_bench.write(kube_proxy_coexistence_bench.run(), args.out))
    if args.only in ("all", "apply_wait"):
        from . import apply_wait_bench  # apply --wait latency, small store and at scale

        log("apply --wait latency (small store, 2,000 pods + 200 policies)")
        print(apply_wait_bench.write(apply_wait_bench.run(), args.out))
    if args.only in ("all", "service_objects"):
        from . import service_objects_bench  # Maglev disruption, service table, standalone derivation at scale

        log("services' pure core (Maglev disruption, 10,000-service table, standalone EndpointSlice derivation)")
        print(service_objects_bench.write(service_objects_bench.run(), args.out))
    if args.only in ("all", "services"):
        from . import services_bench  # socket-level ClusterIP vs kube-proxy's iptables layout

        log("services (ClusterIP at the socket vs kube-proxy iptables: 1/1,000/10,000 services, throughput, "
            "apply-to-enforced, memory)")
        print(services_bench.write(services_bench.run(), args.out))
    if args.only in ("all", "nodeport"):
        from . import nodeport_bench  # NodePort per packet: tc (bpf_host.c) vs kube-proxy's iptables layout

        log("NodePort per packet (membrane tc vs kube-proxy iptables, same run)")
        print(nodeport_bench.write(nodeport_bench.run(), args.out))
    if args.only in ("all", "prefilter_propagation"):
        from . import prefilter_propagation  # PacketFilter/CIDRDenyList apply-to-enforced at 100 nodes

        log("prefilter apply-to-enforced on every node (100 simulated nodes)")
        print(prefilter_propagation.write(prefilter_propagation.run(prefilter_propagation.parser().parse_args(
            ["--out", str(args.out)])), args.out))
    if args.only in ("all", "prefilter"):
        from . import prefilter_bench  # XDP vs tc vs iptables raw under a flood, cost per rule

        log("XDP prefilter (flood: XDP native/generic vs tc vs iptables raw vs none; cost per rule)")
        print(prefilter_bench.write(prefilter_bench.run(), args.out))
    if args.only in ("all", "cni_startup"):
        from . import cni_startup  # Go plugin vs the Python plugin it replaced: bench-results/cni_startup.*

        log("CNI plugin start-up (Go binary vs the former Python plugin)")
        print(cni_startup.write(cni_startup.run(40), args.out))
    if args.only in ("all", "state_store"):
        from . import state_store_bench  # JSON files vs SQLite: ADD/DEL latency, start to ready

        if args.state_store_before:
            log("state store benchmark (JSON files vs SQLite, side by side)")
            state_store_bench.main(["--before", args.state_store_before, "--out", str(args.out)])
        else:
            log("state store benchmark skipped: it needs --state-store-before PYTHON (an older installation)")
    if args.only in ("all", "object_store"):
        from . import object_store_bench  # JSON journal vs state.db: apply of 1/100 objects, CNI ADD

        log("object store benchmark (JSON snapshot + journal vs state.db, side by side)")
        object_store_bench.main(["--out", str(args.out)])
    if args.only in ("all", "pipeline"):
        from . import pipeline_bench  # agent start, CNI ADD, apply --wait: this tree vs an older commit

        if args.pipeline_base:
            log("state pipeline benchmark (agent start, CNI ADD, apply --wait; old vs new side by side)")
            pipeline_bench.main(["--base", args.pipeline_base, "--out", str(args.out)])
        else:
            log("state pipeline benchmark skipped: it needs --pipeline-base REV (an older commit)")
    if args.only in ("all", "compile_time"):
        from . import compile_time_bench  # clang (through bcc) and verifier time per program family vs b4535fb

        log("datapath compile time benchmark (per family, b4535fb vs this tree)")
        compile_time_bench.main(["--out", str(args.out)])
    if args.only in ("all", "tls"):
        from . import tls_bench  # mutual TLS vs plaintext at 1,000 subscribers: bench-results/tls.*

        log("state stream TLS benchmark (mutual TLS vs plaintext, 1,000 subscribers, alternating rounds)")
        print(tls_bench.write(tls_bench.run(tls_bench.parser().parse_args(["--out", str(args.out)])), args.out))
    if getattr(args, "only", None) in (None, "all", "operator"):  # an --only switch, when there is one
        from . import operator_scale  # 10,000 pods, 1,000 subscribers: bench-results/operator.*

        log("operator scale benchmark (10,000 pods, 1,000 state-stream subscribers)")
        print(operator_scale.write(operator_scale.run(operator_scale.parser().parse_args(
            ["--out", str(args.out)])), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
