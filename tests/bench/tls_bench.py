"""TLS cost on the state stream: propagation at 1,000 subscribers, mutual TLS vs plaintext,
in the same run.

Run from the repo root: `python -m tests.bench.tls_bench` (or `make bench`, part "tls"). No
root. The API stand-in runs in this process; the real `membrane-operator` runs as a process on
a unix socket, once with `--insecure-plaintext` and once with mutual TLS (the CA pre-created in
its Secret, as the lab does), alternating (plain, tls, plain, tls, ...) so drift of the shared
machine hits both alike. Subscribers are `tests.bench.scale_subscribers` processes, each
subscription on its own connection; with TLS each presents its own node certificate (ECDSA
P-256, one per node, issued by the cluster CA). Node objects exist for every subscriber.

Measured per round: connect (1,000 handshakes + snapshots) wall time and operator CPU, then
single pod label changes from the API write to the last subscriber's ack (p50/p99), operator
CPU and subscribers' CPU per change. Reported: medians over rounds and TLS/plain ratios.
Writes `bench-results/tls.json` and `bench-results/tls.md`.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from membrane.tls.certificates import Authority
from membrane_testkit.kubeapi import KubeApiServer

from .operator_scale import Objects, OperatorProcess, SubscriberPool, single_changes, wait_metric
from .stats import median

PREFIX = "node"  # Objects.add_nodes names nodes node0, node1, ...


def log(msg: str) -> None:
    print(f"[tls-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_certs(core: client.CoreV1Api, directory: Path, count: int) -> float:
    """The CA in the operator's Secret and one certificate per subscriber; returns seconds."""
    t0 = time.monotonic()
    authority = Authority.create()
    core.create_namespaced_secret("kube-system", {
        "metadata": {"name": "membrane-ca"}, "type": "Opaque",
        "data": {"ca.crt": base64.b64encode(authority.cert_pem).decode(),
                 "ca.key": base64.b64encode(authority.key_pem).decode()}})
    directory.mkdir(mode=0o700, parents=True)
    (directory / "ca.crt").write_bytes(authority.cert_pem)
    for i in range(count):
        pair = authority.issue(f"{PREFIX}{i}", dt.timedelta(hours=6))
        (directory / f"{PREFIX}{i}.key").write_bytes(pair.key_pem)
        (directory / f"{PREFIX}{i}.crt").write_bytes(pair.cert_pem)
    return time.monotonic() - t0


def one_round(args: argparse.Namespace, api: KubeApiServer, workdir: Path, core: client.CoreV1Api,
              net: client.NetworkingV1Api, tls: bool, certs: Path, salt: int) -> dict[str, Any]:
    mode = "tls" if tls else "plain"
    rundir = workdir / f"{mode}-{time.monotonic_ns()}"
    rundir.mkdir()
    env = {} if not tls else {"MEMBRANE_INSECURE_PLAINTEXT": "false"}
    op = OperatorProcess(api.url, rundir, extra_env=env)
    pool: SubscriberPool | None = None
    try:
        op.wait_ready()
        wait_metric(op, 'membrane_operator_state_objects{kind="endpoint"}', args.pods, 300)
        t0, cpu0 = time.monotonic(), op.cpu_s()
        pool = SubscriberPool(f"unix:{op.socket}", args.subscribers, args.procs, prefix=PREFIX,
                              env={"MEMBRANE_BENCH_TLS_DIR": str(certs)} if tls else None)
        pool.wait_synced(600)
        connect = {"wall_s": time.monotonic() - t0, "operator_cpu_s": op.cpu_s() - cpu0}
        pool.drain(quiet=2.0)
        changes = single_changes(pool, op, core, net, "pod label (existing identity)", args.changes, args.pods,
                                 salt=salt)
        changes.pop("samples", None)
        log(f"{mode}: connect {connect['wall_s']:.1f}s, p50 {changes['p50_ms']:.0f} ms, "
            f"p99 {changes['p99_ms']:.0f} ms, operator {changes['operator_cpu_s_per_change'] * 1000:.0f} ms CPU/change")
        return {"mode": mode, "connect": connect, "changes": changes, "rss_kib": op.rss_kib()}
    finally:
        if pool is not None:
            pool.stop()
        op.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mbbench-tls-"))
    api = KubeApiServer(port=0, history_limit=200_000).start()
    api_client = api.api_client()
    core, net = client.CoreV1Api(api_client), client.NetworkingV1Api(api_client)
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "machine": {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                           "kernel": platform.release(), "cores": os.cpu_count(),
                                           "python": platform.python_version(), "loadavg_start": os.getloadavg()},
                               "rounds": []}
    try:
        objects = Objects(api)
        objects.namespaces()
        objects.add_nodes(args.subscribers)  # node0..: one per subscriber, the pods spread over them
        objects.add_pods(args.pods, args.subscribers)
        results["cert_issue_s"] = make_certs(core, workdir / "certs", args.subscribers)
        log(f"{args.subscribers} nodes, {args.pods} pods, {args.subscribers} certificates "
            f"({results['cert_issue_s']:.1f}s)")
        for index in range(args.rounds * 2):
            results["rounds"].append(one_round(args, api, workdir, core, net, index % 2 == 1, workdir / "certs",
                                               salt=index + 1))
    finally:
        api_client.close()
        api.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["summary"] = summary(results["rounds"])
    return results


def summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("plain", "tls"):
        mine = [r for r in rounds if r["mode"] == mode]
        out[mode] = {
            "p50_ms": median([r["changes"]["p50_ms"] for r in mine]),
            "p99_ms": median([r["changes"]["p99_ms"] for r in mine]),
            "operator_cpu_ms_per_change": median([r["changes"]["operator_cpu_s_per_change"] * 1000 for r in mine]),
            "subscribers_cpu_ms_per_change": median([r["changes"]["subscribers_cpu_s_per_change"] * 1000
                                                     for r in mine]),
            "connect_wall_s": median([r["connect"]["wall_s"] for r in mine]),
            "connect_operator_cpu_s": median([r["connect"]["operator_cpu_s"] for r in mine]),
            "rss_kib": median([r["rss_kib"] for r in mine]),
        }
    plain, tls = out["plain"], out["tls"]
    out["ratio"] = {k: (tls[k] / plain[k] if plain[k] else None) for k in plain}
    return out


def markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    cfg = r["config"]
    n = cfg["subscribers"]
    rows = [("propagation p50 (ms)", "p50_ms", "{:.0f}"), ("propagation p99 (ms)", "p99_ms", "{:.0f}"),
            ("operator CPU per change (ms)", "operator_cpu_ms_per_change", "{:.1f}"),
            (f"subscribers' CPU per change (ms, all {n:,})", "subscribers_cpu_ms_per_change", "{:.1f}"),
            (f"connect: {n:,} subscriptions synced (s)", "connect_wall_s", "{:.1f}"),
            ("connect: operator CPU (s)", "connect_operator_cpu_s", "{:.2f}"),
            (f"operator RSS with {n:,} streams (MiB)", "rss_kib", "{:.0f}")]
    lines = [
        f"# State stream: mutual TLS vs plaintext at {n:,} subscribers",
        "",
        f"`python -m tests.bench.tls_bench` on {r['machine']['date']}, {r['machine']['cores']} cores "
        f"(shared, noisy: load {r['machine']['loadavg_start'][0]:.1f} at start, "
        f"{r['machine']['loadavg_end'][0]:.1f} at end), kernel {r['machine']['kernel']}.",
        f"{cfg['subscribers']} subscribers (one connection and one node certificate each) in {cfg['procs']} "
        f"processes, {cfg['pods']} pods, {cfg['changes']} single pod-label changes per round, "
        f"{cfg['rounds']} rounds per mode alternating plain/TLS in one run; medians over rounds.",
        f"Propagation: from the API write to the last of the {n:,} acks.",
        "",
        "| | plaintext | mutual TLS | TLS / plain |",
        "|---|---:|---:|---:|",
    ]
    for label, key, fmt in rows:
        scale = (lambda v: v / 1024) if key == "rss_kib" else (lambda v: v)
        ratio = s["ratio"][key]
        lines.append(f"| {label} | {fmt.format(scale(s['plain'][key]))} | {fmt.format(scale(s['tls'][key]))} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}x'} |")
    lines += ["", "Per round:", "", "| round | mode | p50 ms | p99 ms | operator CPU ms/change | connect s |",
              "|---:|---|---:|---:|---:|---:|"]
    for i, rd in enumerate(r["rounds"]):
        lines.append(f"| {i + 1} | {rd['mode']} | {rd['changes']['p50_ms']:.0f} | {rd['changes']['p99_ms']:.0f} | "
                     f"{rd['changes']['operator_cpu_s_per_change'] * 1000:.1f} | {rd['connect']['wall_s']:.1f} |")
    lines += ["", f"Issuing {cfg['subscribers']} node certificates (ECDSA P-256) took {r['cert_issue_s']:.1f} s.",
              "A live stream costs the operator one symmetric encryption per message per subscriber "
              "(each delta is encoded once, then encrypted per connection); the handshakes are paid at "
              "connect and at each certificate rotation (2/3 of the lifetime, 24 h by default).", ""]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="subscriber processes")
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("--changes", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="rounds per mode")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    return ap


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tls.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(results)
    (out / "tls.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    print(write(run(args), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
