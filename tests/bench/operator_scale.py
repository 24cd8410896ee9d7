"""Operator scale benchmark: 10,000 pods, 1,000 state-stream subscribers, single changes timed.

Run from the repo root: `python -m tests.bench.operator_scale` (or through `tests.bench.run`).
No root needed, no namespaces: the Kubernetes API stand-in runs in this process on 127.0.0.1
(no state file), the real `membrane-operator` runs as a process serving gRPC on a unix socket
in a temporary directory, and the subscribers are `tests.bench.scale_subscribers` processes
(asyncio gRPC clients, one channel each, acking every update).

Bulk objects (namespaces, nodes, pods) are written through the stand-in's request handler in
this process (`KubeApiServer.api.handle`: the same verbs, validation and watch events as over
HTTP, without a socket), because 20,000 HTTP writes through the `kubernetes` client would take
minutes. Every timed single change goes through the real `kubernetes` client over HTTP.

Measured: propagation of single changes from the API write to the last subscriber's ack (our
clock, CLOCK_MONOTONIC across processes) and the operator's own histogram (from the watch event
to the last ack); bytes sent per change summed over subscribers; operator RSS and CPU seconds
from /proc; memory growth per pod (RSS at two pod counts), per node and per subscriber.
Writes `bench-results/operator.json` and `bench-results/operator.md`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client

from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.kubeapi.messages import Request

from .stats import median, percentile

NAMESPACES = 10
APPS = 50  # identities: namespaces x apps
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[operator-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the process under test --------------------------------------------------------------------
class OperatorProcess:
    def __init__(self, api_url: str, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.http = free_port()
        self.socket = workdir / "operator.sock"
        self.log_path = workdir / "operator.log"
        env = {**os.environ, "MEMBRANE_API_SERVER": api_url, "MEMBRANE_POD_NAME": "bench-op",
               "MEMBRANE_INSTALL_CRDS": "true", "MEMBRANE_CLUSTER_CIDR": "10.0.0.0/8",
               "MEMBRANE_HTTP_ADDR": f"127.0.0.1:{self.http}",
               "MEMBRANE_GRPC_ADDR": f"unix:{self.socket}", "MEMBRANE_LOG_LEVEL": "warning",
               # this benchmark measures the plaintext stream (tls_bench compares the two)
               "MEMBRANE_INSECURE_PLAINTEXT": "true", **(extra_env or {})}
        exe = Path(sys.executable).with_name("membrane-operator")
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "membrane.operator.main"]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out,
                                         stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"operator not ready: {self.log_tail()}")
            time.sleep(0.2)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# --- subscribers -------------------------------------------------------------------------------
class SubscriberPool:
    """`processes` subscriber processes; their report lines merged per version."""

    def __init__(self, target: str, total: int, processes: int, prefix: str = "bench-node-",
                 env: dict[str, str] | None = None) -> None:
        self.total = total
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.procs: list[subprocess.Popen[str]] = []
        per = -(-total // processes)
        for first in range(0, total, per):
            count = min(per, total - first)
            proc = subprocess.Popen([sys.executable, "-m", "tests.bench.scale_subscribers", target,
                                     prefix, str(first), str(count)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    env={**os.environ, **(env or {})},
                                    cwd=Path(__file__).resolve().parents[2])
            self.procs.append(proc)
            threading.Thread(target=self._read, args=(proc,), daemon=True).start()
        self.versions: dict[int, dict[str, Any]] = {}  # merged, complete or not
        self.complete: dict[int, dict[str, Any]] = {}

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                self.events.put({**json.loads(line), "pid": proc.pid})
            except ValueError:
                pass

    def _take(self, timeout: float) -> dict[str, Any] | None:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if event["event"] == "version":
            merged = self.versions.setdefault(event["v"], {"v": event["v"], "n": 0, "parts": 0,
                                                           "last_ack": 0.0, "bytes": 0,
                                                           "first_recv": float("inf"),
                                                           "keys": event["keys"]})
            if not merged["keys"]:  # a process whose subscribers all got it inside a batch
                merged["keys"] = event["keys"]
            merged["n"] += event["n"]
            merged["parts"] += 1
            merged["bytes"] += event["bytes"]
            merged["last_ack"] = max(merged["last_ack"], event["last_ack"])
            merged["first_recv"] = min(merged["first_recv"], event["first_recv"])
            if merged["parts"] == len(self.procs):
                self.complete[event["v"]] = merged
        return event

    def wait_synced(self, timeout: float) -> list[dict[str, Any]]:
        synced: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(synced) < len(self.procs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(synced)}/{len(self.procs)} subscriber processes synced")
            event = self._take(1.0)
            if event is not None and event["event"] == "synced":
                synced.append(event)
        return synced

    def wait_key(self, key: str, after_version: int, timeout: float) -> dict[str, Any]:
        """The first complete version above `after_version` whose changes include `key`."""
        deadline = time.monotonic() + timeout
        while True:
            for v in sorted(self.complete):
                if v > after_version and key in self.complete[v]["keys"]:
                    return self.complete[v]
            if time.monotonic() > deadline:
                raise RuntimeError(f"{key} not acked by every subscriber within {timeout}s")
            self._take(0.5)

    def drain(self, quiet: float = 1.0, timeout: float = 600) -> int:
        """Consume reports until none came for `quiet` seconds; returns the last complete version."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._take(quiet) is None:
                break
        return max(self.complete, default=0)

    def stats(self) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("stats\n")
            proc.stdin.flush()
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(got) < len(self.procs) and time.monotonic() < deadline:
            event = self._take(0.5)
            if event is not None and event["event"] == "stats":
                got.append(event)
        return got

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(5)


# --- the cluster -------------------------------------------------------------------------------
class Objects:
    """Bulk writes through the stand-in's request handler (no HTTP)."""

    def __init__(self, api: KubeApiServer) -> None:
        self.api = api
        self.pods = 0
        self.nodes = 0

    def _do(self, method: str, path: str, body: Any, content_type: str = "application/json") -> None:
        result = self.api.api.handle(Request(method, path, {}, content_type, json.dumps(body).encode()))
        code = getattr(result, "code", 200)
        if code >= 300:
            raise RuntimeError(f"{method} {path}: {code} {getattr(result, 'body', '')}")

    def namespaces(self) -> None:
        for i in range(NAMESPACES):
            self._do("POST", "/api/v1/namespaces", {"metadata": {"name": f"ns{i}",
                                                                 "labels": {"team": f"t{i % 3}"}}})

    def add_nodes(self, count: int) -> None:
        for _ in range(count):
            i = self.nodes
            self.nodes += 1
            self._do("POST", "/api/v1/nodes", {"metadata": {"name": f"node{i}"}, "status": {
                "addresses": [{"type": "InternalIP",
                               "address": f"172.16.{i // 250}.{i % 250 + 1}"}]}})

    def add_named_nodes(self, names: list[str]) -> None:
        """Node objects for subscribers (the operator refuses names with no Node)."""
        for i, name in enumerate(names):
            self._do("POST", "/api/v1/nodes", {"metadata": {"name": name}, "status": {
                "addresses": [{"type": "InternalIP", "address": f"172.31.{i // 250}.{i % 250 + 1}"}]}})

    def add_pods(self, count: int, nodes: int) -> None:
        for _ in range(count):
            i = self.pods
            self.pods += 1
            ns, name = f"ns{(i // APPS) % NAMESPACES}", f"pod{i}"
            self._do("POST", f"/api/v1/namespaces/{ns}/pods", {
                "metadata": {"name": name, "labels": {"app": f"app{i % APPS}",
                                                      "pod-template-hash": "abc"}},
                "spec": {"nodeName": f"node{i % nodes}", "containers": [
                    {"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]}})
            self._do("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}/status",
                     {"status": {"phase": "Running", "podIP": f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}",
                                 "podIPs": [{"ip": f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}"}]}},
                     "application/merge-patch+json")


def wait_metric(op: OperatorProcess, name: str, value: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while op.metrics().get(name, 0) < value:
        if time.monotonic() > deadline or op.proc.poll() is not None:
            raise RuntimeError(f"{name} did not reach {value}: {op.log_tail()}")
        time.sleep(0.5)


PROPAGATION = "membrane_operator_state_propagation_seconds"


def wait_all_acked(op: OperatorProcess, since: dict[str, float], timeout: float) -> float:
    """Until every version committed after the `since` scrape is acked by every subscriber:
    the operator observes one propagation per version committed while anyone is subscribed.
    (The subscriber processes' own reports only say a version is complete when all four saw
    it as one message; a lagging subscriber may get several versions batched.) Returns the
    slowest propagation's upper bound in seconds (histogram bucket)."""
    deadline = time.monotonic() + timeout
    while True:
        m = op.metrics()
        versions = m.get("membrane_operator_state_version", 0) - since.get("membrane_operator_state_version", 0)
        count = m.get(PROPAGATION + "_count", 0) - since.get(PROPAGATION + "_count", 0)
        if count >= versions:
            return bucket_quantile(histogram(since, PROPAGATION), histogram(m, PROPAGATION), 1.0) or 0.0
        if time.monotonic() > deadline or op.proc.poll() is not None:
            raise RuntimeError(f"{versions - count} versions not acked by every subscriber: {op.log_tail()}")
        time.sleep(0.2)


def histogram(metrics: dict[str, float], base: str) -> dict[float, float]:
    out = {}
    for name, value in metrics.items():
        if name.startswith(base + "_bucket{"):
            le = name.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = value
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """Upper bound of the bucket holding quantile q of the observations between two scrapes."""
    diffs = sorted((le, after.get(le, 0) - before.get(le, 0)) for le in after)
    total = diffs[-1][1] if diffs else 0
    if total <= 0:
        return None
    for le, count in diffs:
        if count >= q * total:
            return le
    return None


# --- the scenario ------------------------------------------------------------------------------
def single_changes(pool: SubscriberPool, op: OperatorProcess, core: client.CoreV1Api,
                   net: client.NetworkingV1Api, kind: str, n: int, total_pods: int,
                   salt: int = 0) -> dict[str, Any]:
    """`salt` picks other pods and labels (repeated runs on one cluster must change something)."""
    samples: list[dict[str, Any]] = []
    metrics_before = op.metrics()
    cpu_before = op.cpu_s()
    last = pool.drain(quiet=1.0)
    sub_cpu_before = sum(s["cpu_s"] for s in pool.stats())
    for i in range(n):
        if kind == "pod label (existing identity)":
            index = (i * 7919 + salt * 104723) % total_pods
            ns, name = f"ns{(index // APPS) % NAMESPACES}", f"pod{index}"
            labels = {"app": f"app{(index + 1 + i + salt) % APPS}"}
            key = f"U:endpoint:{ns}/{name}"
            t0 = time.monotonic()
            core.patch_namespaced_pod(name, ns, {"metadata": {"labels": labels}})
        elif kind == "pod label (new identity)":
            index = (i * 104729 + 13) % total_pods
            ns, name = f"ns{(index // APPS) % NAMESPACES}", f"pod{index}"
            key = f"U:endpoint:{ns}/{name}"
            t0 = time.monotonic()
            core.patch_namespaced_pod(name, ns, {"metadata": {"labels": {"app": f"fresh{i}"}}})
        elif kind == "policy create":
            ns, name = f"ns{i % NAMESPACES}", f"bench-pol-{i}"
            key = f"U:policy:{ns}/{name}"
            body = {"metadata": {"name": name, "namespace": ns}, "spec": {
                "podSelector": {"matchLabels": {"app": f"app{i % APPS}"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"app{(i + 1) % APPS}"}}}],
                             "ports": [{"port": 8080, "protocol": "TCP"}]}]}}
            t0 = time.monotonic()
            net.create_namespaced_network_policy(ns, body)
        else:  # policy edit
            ns, name = f"ns{i % NAMESPACES}", f"bench-pol-{i}"
            key = f"U:policy:{ns}/{name}"
            t0 = time.monotonic()
            net.patch_namespaced_network_policy(name, ns, {"spec": {"ingress": [{"ports": [
                {"port": 9000 + i, "protocol": "TCP"}]}]}})
        got = pool.wait_key(key, last, timeout=60)
        samples.append({"version": got["v"], "ms": (got["last_ack"] - t0) * 1000,
                        "first_recv_ms": (got["first_recv"] - t0) * 1000, "bytes": got["bytes"],
                        "acks": got["n"], "versions_between": got["v"] - last,
                        "changes": got["keys"][-1]})
        last = pool.drain(quiet=0.3)
    metrics_after = op.metrics()
    sub_cpu = sum(s["cpu_s"] for s in pool.stats()) - sub_cpu_before
    base = "membrane_operator_state_propagation_seconds"
    h0, h1 = histogram(metrics_before, base), histogram(metrics_after, base)
    count = metrics_after.get(base + "_count", 0) - metrics_before.get(base + "_count", 0)
    total = metrics_after.get(base + "_sum", 0) - metrics_before.get(base + "_sum", 0)
    ms = [s["ms"] for s in samples]
    return {"n": n, "p50_ms": median(ms), "p99_ms": percentile(ms, 99), "max_ms": max(ms),
            "bytes_per_change": median([s["bytes"] for s in samples]),
            "operator_cpu_s_per_change": (op.cpu_s() - cpu_before) / n,
            "subscribers_cpu_s_per_change": sub_cpu / n,
            "operator_histogram": {"count": count, "mean_ms": total / count * 1000 if count else None,
                                   "p50_le_s": bucket_quantile(h0, h1, 0.5),
                                   "p99_le_s": bucket_quantile(h0, h1, 0.99)},
            "samples": samples}


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mbbench-operator-"))
    api = KubeApiServer(port=0, history_limit=200_000).start()
    objects = Objects(api)
    op: OperatorProcess | None = None
    pool: SubscriberPool | None = None
    api_client = api.api_client()
    core, net = client.CoreV1Api(api_client), client.NetworkingV1Api(api_client)
    results: dict[str, Any] = {"config": {k: (str(v) if isinstance(v, Path) else v)
                                          for k, v in vars(args).items()},
                               "machine": {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                           "kernel": platform.release(), "cores": os.cpu_count(),
                                           "python": platform.python_version(),
                                           "loadavg_start": os.getloadavg()}}
    memory: dict[str, Any] = {}
    results["memory"] = memory
    half = args.pods // 2
    try:
        t0 = time.monotonic()
        objects.namespaces()
        objects.add_nodes(args.nodes)
        objects.add_named_nodes([f"bench-node-{i}" for i in range(args.subscribers)])  # one per subscriber
        objects.add_pods(half, args.nodes)
        log(f"{half} pods on {args.nodes} nodes written in {time.monotonic() - t0:.1f}s (handler, no HTTP)")
        t0 = time.monotonic()
        op = OperatorProcess(api.url, workdir)
        op.wait_ready()
        wait_metric(op, 'membrane_operator_state_objects{kind="endpoint"}', half, 300)
        results["operator_start_to_full_state_s"] = time.monotonic() - t0
        time.sleep(3)
        memory["rss_kib_no_subscribers"] = op.rss_kib()
        log(f"operator has {half} endpoints after {results['operator_start_to_full_state_s']:.1f}s; "
            f"RSS {memory['rss_kib_no_subscribers']} KiB; connecting {args.subscribers} subscribers")
        t0 = time.monotonic()
        cpu0 = op.cpu_s()
        pool = SubscriberPool(f"unix:{op.socket}", args.subscribers, args.procs)
        synced = pool.wait_synced(600)
        results["subscribers_connect"] = {"wall_s": time.monotonic() - t0, "operator_cpu_s": op.cpu_s() - cpu0,
                                          "snapshot_bytes_each": synced[0]["snapshot_bytes"] / synced[0]["n"]}
        pool.drain(quiet=2.0)
        memory["rss_kib_half_pods"] = op.rss_kib()
        memory["per_subscriber_kib"] = (memory["rss_kib_half_pods"] - memory["rss_kib_no_subscribers"]) / args.subscribers
        log(f"{args.subscribers} subscribers synced in {results['subscribers_connect']['wall_s']:.1f}s; "
            f"RSS {memory['rss_kib_half_pods']} KiB")

        # The second half of the pods while 1,000 agents follow the stream.
        t0 = time.monotonic()
        cpu0 = op.cpu_s()
        since = op.metrics()
        objects.add_pods(args.pods - half, args.nodes)
        wait_metric(op, 'membrane_operator_state_objects{kind="endpoint"}', args.pods, 600)
        slowest = wait_all_acked(op, since, 600)
        wall = time.monotonic() - t0
        after = op.metrics()
        last = pool.drain(quiet=1.0)
        results["bulk_add"] = {"pods": args.pods - half, "wall_s_to_all_acked": wall,
                               "operator_cpu_s": op.cpu_s() - cpu0, "last_version": last,
                               "versions": after.get("membrane_operator_state_version", 0)
                               - since.get("membrane_operator_state_version", 0),
                               "delta_messages": after.get("membrane_operator_state_deltas_sent_total", 0)
                               - since.get("membrane_operator_state_deltas_sent_total", 0),
                               "slowest_propagation_le_s": slowest}
        time.sleep(2)
        memory["rss_kib_full_pods"] = op.rss_kib()
        memory["per_pod_kib"] = (memory["rss_kib_full_pods"] - memory["rss_kib_half_pods"]) / (args.pods - half)
        log(f"{args.pods} pods: RSS {memory['rss_kib_full_pods']} KiB; bulk add {results['bulk_add']}")

        # Idle cost at full size: resync passes only.
        cpu0, t0 = op.cpu_s(), time.monotonic()
        time.sleep(args.idle_seconds)
        results["idle_cpu_fraction"] = (op.cpu_s() - cpu0) / (time.monotonic() - t0)

        results["changes"] = {}
        for kind, n in (("pod label (existing identity)", args.changes), ("policy create", args.policy_changes),
                        ("policy edit", args.policy_changes), ("pod label (new identity)", args.identity_changes)):
            log(f"{n} x {kind}")
            results["changes"][kind] = single_changes(pool, op, core, net, kind, n, args.pods)
            log(f"  p50 {results['changes'][kind]['p50_ms']:.0f} ms, p99 {results['changes'][kind]['p99_ms']:.0f} ms")

        # Nodes: more Node objects (each gets a PodCIDR written by the leader).
        time.sleep(1)
        rss0 = op.rss_kib()
        before = op.metrics().get('membrane_operator_state_objects{kind="node"}', 0)
        objects.add_nodes(args.extra_nodes)
        wait_metric(op, 'membrane_operator_pod_cidrs_allocated', args.nodes + args.extra_nodes, 300)
        pool.drain(quiet=2.0)
        time.sleep(2)
        memory["rss_kib_more_nodes"] = op.rss_kib()
        memory["per_node_object_kib"] = (memory["rss_kib_more_nodes"] - rss0) / args.extra_nodes
        memory["nodes_before"] = before
        results["operator_rss_kib_final"] = op.rss_kib()
        results["operator_cpu_s_total"] = op.cpu_s()
        final = op.metrics()
        results["operator_counters"] = {k: v for k, v in final.items() if k.startswith((
            "membrane_operator_state_bytes_sent_total", "membrane_operator_state_snapshots_sent_total",
            "membrane_operator_state_deltas_sent_total", "membrane_operator_state_subscribers",
            "membrane_operator_controller_pass_seconds_sum", "membrane_operator_controller_pass_seconds_count",
            "membrane_operator_state_version"))}
        results["rebuild_warnings"] = op.log_path.read_text().count("incremental path had missed")
        results["subscriber_processes"] = pool.stats()
    finally:
        if pool is not None:
            pool.stop()
        if op is not None:
            op.stop()
            results["operator_log_tail"] = op.log_tail(10)
        api_client.close()
        api.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["targets"] = targets(results)
    return results


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for kind, data in results.get("changes", {}).items():
        rows.append({"name": f"p99 propagation, {kind}", "value_ms": data["p99_ms"], "target": "< 1000 ms",
                     "met": data["p99_ms"] < 1000})
    return rows


def markdown(r: dict[str, Any]) -> str:
    cfg, mem = r["config"], r["memory"]
    f = lambda v, d=0: "n/a" if v is None else f"{v:,.{d}f}"  # noqa: E731
    load = lambda k: "/".join(f"{x:.1f}" for x in r["machine"].get(k) or ()) or "n/a"  # noqa: E731
    lines = [f"# Operator scale: {cfg['pods']:,} pods, {cfg['nodes']} nodes, {cfg['subscribers']:,} subscribers",
             "", f"{r['machine']['date']}, kernel {r['machine']['kernel']}, {r['machine']['cores']} cores "
             f"(shared by the operator, the API stand-in and {cfg['procs']} subscriber processes), "
             f"Python {r['machine']['python']}. `python -m tests.bench.operator_scale`. "
             f"Load average (1/5/15 min) at start {load('loadavg_start')}, at end {load('loadavg_end')} "
             "(other work shares the machine).", "",
             "## Targets", "", "| target | result | met? |", "|---|---:|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['name']} {t['target']} | {f(t['value_ms'])} ms | {'yes' if t['met'] else 'NO'} |")
    lines += ["", "## Single changes at full size", "",
              "Propagation: from just before the API write (real `kubernetes` client over HTTP) to the "
              "last of all subscribers' acks, by our clock. The operator's histogram starts later (when "
              "its watch delivers the change); its quantiles are bucket upper bounds.", "",
              "| change | n | p50 (ms) | p99 (ms) | max (ms) | operator histogram mean (ms) | histogram p99 <= (s) "
              "| bytes sent per change (all subscribers) | operator CPU per change (s) "
              "| subscriber processes' CPU per change (s) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, d in r.get("changes", {}).items():
        h = d["operator_histogram"]
        lines.append(f"| {kind} | {d['n']} | {f(d['p50_ms'])} | {f(d['p99_ms'])} | {f(d['max_ms'])} "
                     f"| {f(h['mean_ms'])} | {h['p99_le_s']} | {f(d['bytes_per_change'])} "
                     f"| {f(d['operator_cpu_s_per_change'], 3)} | {f(d.get('subscribers_cpu_s_per_change'), 3)} |")
    sub = r.get("subscribers_connect", {})
    bulk = r.get("bulk_add", {})
    lines += ["", "A pod moved to a label set nobody had before needs an identity first: the operator "
              "withdraws the endpoint, the leader writes a MembraneIdentity, the watch brings it back and "
              "the endpoint returns with it (two deltas; the time is to the second).", "",
              "## Operator resources", "",
              "| measure | value |", "|---|---:|",
              f"| RSS, {cfg['pods'] // 2:,} pods, no subscribers | {f(mem.get('rss_kib_no_subscribers'))} KiB |",
              f"| RSS, {cfg['pods'] // 2:,} pods, {cfg['subscribers']:,} subscribers | {f(mem.get('rss_kib_half_pods'))} KiB |",
              f"| RSS, {cfg['pods']:,} pods, {cfg['subscribers']:,} subscribers | {f(mem.get('rss_kib_full_pods'))} KiB |",
              f"| RSS growth per pod | {f(mem.get('per_pod_kib'), 2)} KiB |",
              f"| RSS growth per subscriber (connected agent) | {f(mem.get('per_subscriber_kib'), 1)} KiB |",
              f"| RSS growth per Node object (+{cfg['extra_nodes']} nodes) | {f(mem.get('per_node_object_kib'), 1)} KiB |",
              f"| operator start to full state ({cfg['pods'] // 2:,} pods, identities allocated) | {f(r.get('operator_start_to_full_state_s'), 1)} s |",
              f"| {cfg['subscribers']:,} subscribers connect and apply the snapshot | {f(sub.get('wall_s'), 1)} s, operator CPU {f(sub.get('operator_cpu_s'), 1)} s |",
              f"| snapshot size per subscriber | {f(sub.get('snapshot_bytes_each'))} bytes |",
              f"| bulk: +{bulk.get('pods', 0):,} pods written, all acked by every subscriber | {f(bulk.get('wall_s_to_all_acked'), 1)} s, operator CPU {f(bulk.get('operator_cpu_s'), 1)} s |",
              f"| bulk: versions committed, delta messages sent (all subscribers; lagging ones get batches) | {f(bulk.get('versions'))}, {f(bulk.get('delta_messages'))} |",
              f"| idle CPU at full size (resync passes) | {f((r.get('idle_cpu_fraction') or 0) * 100, 1)} % of a core |",
              f"| full rebuilds that found the incremental state wrong | {r.get('rebuild_warnings')} |",
              "", "Memory growth per node = per Node object + per subscriber (every node runs one agent). "
              "RSS slopes are from two sizes of one process; Python's allocator does not return freed "
              "memory, so they are upper bounds of what the data needs.", "",
              "Raw samples (per change: version, time to first receive and to last ack, bytes) are in "
              "`operator.json`."]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--extra-nodes", type=int, default=200)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=4, help="subscriber processes")
    ap.add_argument("--changes", type=int, default=30)
    ap.add_argument("--policy-changes", type=int, default=15)
    ap.add_argument("--identity-changes", type=int, default=10)
    ap.add_argument("--idle-seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    return ap


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "operator.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(results)
    (out / "operator.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    print(write(run(args), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
