"""Prefilter apply-to-enforced on every node of a simulated cluster (goal: p99 < 1 s at 100 agents).

Run from the repo root: `python -m tests.bench.prefilter_propagation` (or `tests.bench.run --only
prefilter_propagation`). No root needed. The Kubernetes API stand-in runs in this process (it
validates each PacketFilter against the CRD's schema, as a real server does), the real
`membrane-operator` runs as a process, and the agents are `tests.bench.scale_subscribers`
processes: one gRPC connection per simulated node, each turning every filter record into the
datapath's encoded rules and deny entries (the pure part of an agent's prefilter manager; the
map writes, measured by the XDP benchmarks, are left out) before it acks.

Measured, per change written through the real `kubernetes` client over HTTP:

- **apply to enforced everywhere**: from just before the write to the last node's ack of the
  stream version that carries it (CLOCK_MONOTONIC, comparable across processes);
- **apply to status**: until a reader of the object sees `status.enforced: N/N` at the new
  `enforcedGeneration` (what `kubectl wait --for=jsonpath=...` sees; polled every 10 ms);
- bytes sent per change summed over the nodes, the operator's CPU per change.

Changes: a PacketFilter edit (one rule's port), switching the sanity checks on and off, and a
CIDRDenyList of 10,000 prefixes edited (one prefix replaced: streamed as the list's head and the
one or two chunks the edit touched).
Writes `bench-results/prefilter-propagation.json` and `.md`.
"""

from __future__ import annotations

import argparse
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

from membrane_testkit.kubeapi import KubeApiServer

from .operator_scale import Objects, OperatorProcess, SubscriberPool
from .stats import median, percentile

GROUP, VERSION = "membrane.io", "v1alpha1"


def log(msg: str) -> None:
    print(f"[prefilter-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def packet_filter(port: int, sanity: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"rules": [
        {"name": "cve-2026-0001", "action": "Drop", "ipv4": {"fragment": {"moreFragments": True}},
         "udp": {"destinationPort": {"min": port, "max": port}},
         "payload": {"offset": 0, "value": "dead00ef", "mask": "ffff00ff"}},
        {"name": "syn-flood", "action": "RateLimit", "rateLimit": {"packetsPerSecond": 1000},
         "tcp": {"flags": {"mask": ["SYN", "ACK"], "value": ["SYN"]}}},
        {"name": "audit", "action": "Count", "ipv4": {"ttl": {"max": 1}}}]}
    if sanity:
        spec["sanityChecks"] = sanity
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PacketFilter", "metadata": {"name": "cve"}, "spec": spec}


def prefixes(count: int, salt: int) -> list[str]:
    out = [f"100.{64 + i // 65536 % 64}.{i // 256 % 256}.{i % 256}/32" for i in range(count)]
    out[salt % count] = f"203.0.113.{salt % 256}/32"  # the one prefix each edit replaces
    return list(dict.fromkeys(out))


class Bench:
    def __init__(self, api: KubeApiServer, op: OperatorProcess, pool: SubscriberPool, nodes: int) -> None:
        self.api_client = api.api_client()
        self.custom = client.CustomObjectsApi(self.api_client)
        self.op = op
        self.pool = pool
        self.nodes = nodes

    def _status(self, plural: str, name: str) -> dict[str, Any]:
        return dict(self.custom.get_cluster_custom_object(GROUP, VERSION, plural, name).get("status") or {})

    def _wait_status(self, plural: str, name: str, generation: int, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        want = f"{self.nodes}/{self.nodes}"
        while True:
            status = self._status(plural, name)
            if status.get("enforced") == want and status.get("enforcedGeneration") == generation:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{plural}/{name} status never showed {want} at {generation}: {status}")
            time.sleep(0.01)

    def changes(self, label: str, plural: str, name: str, key: str, n: int,
                write: Any) -> dict[str, Any]:
        """`n` writes (`write(i)` returns the object's new generation); each timed to every node's
        ack and to the status that says so."""
        samples = []
        last = self.pool.drain(quiet=0.5)
        cpu_before = self.op.cpu_s()
        convert_before = sum(s.get("prefilter_s", 0.0) for s in self.pool.stats())
        for i in range(n):
            t0 = time.monotonic()
            generation = write(i)
            got = self.pool.wait_key(key, last, timeout=60)
            shown = self._wait_status(plural, name, generation)
            samples.append({"ms": (got["last_ack"] - t0) * 1000, "status_ms": (shown - t0) * 1000,
                            "first_recv_ms": (got["first_recv"] - t0) * 1000, "bytes": got["bytes"],
                            "acks": got["n"]})
            last = self.pool.drain(quiet=0.2)
        ms = [s["ms"] for s in samples]
        status_ms = [s["status_ms"] for s in samples]
        convert = sum(s.get("prefilter_s", 0.0) for s in self.pool.stats()) - convert_before
        out = {"change": label, "n": n, "p50_ms": median(ms), "p99_ms": percentile(ms, 99), "max_ms": max(ms),
               "status_p50_ms": median(status_ms), "status_p99_ms": percentile(status_ms, 99),
               "first_node_p50_ms": median([s["first_recv_ms"] for s in samples]),
               "bytes_per_change": median([s["bytes"] for s in samples]),
               "operator_cpu_s_per_change": (self.op.cpu_s() - cpu_before) / n,
               "node_convert_ms": convert / n / self.nodes * 1000,
               "acks_min": min(s["acks"] for s in samples), "samples": samples}
        log(f"{label}: p50 {out['p50_ms']:.0f} ms, p99 {out['p99_ms']:.0f} ms to every node's ack; status "
            f"p50 {out['status_p50_ms']:.0f} ms, p99 {out['status_p99_ms']:.0f} ms")
        return out

    def filter_edits(self, n: int) -> dict[str, Any]:
        def write(i: int) -> int:
            obj = self.custom.patch_cluster_custom_object(GROUP, VERSION, "packetfilters", "cve",
                                                          {"spec": packet_filter(10000 + i)["spec"]})
            return int(obj["metadata"]["generation"])
        return self.changes("PacketFilter edit (one rule's port)", "packetfilters", "cve",
                            "U:packet_filter:cve", n, write)

    def sanity_switch(self, n: int) -> dict[str, Any]:
        def write(i: int) -> int:
            obj = self.custom.patch_cluster_custom_object(GROUP, VERSION, "packetfilters", "cve", {
                "spec": {"sanityChecks": "Drop" if i % 2 == 0 else None}})
            return int(obj["metadata"]["generation"])
        return self.changes("sanity checks switched on/off (24 rules)", "packetfilters", "cve",
                            "U:packet_filter:cve", n, write)

    def deny_list_edits(self, n: int, size: int) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CIDRDenyList", "metadata": {"name": "bad"},
                "spec": {"cidrs": prefixes(size, 0)}}
        self.custom.create_cluster_custom_object(GROUP, VERSION, "cidrdenylists", body)
        self._wait_status("cidrdenylists", "bad", 1)

        def write(i: int) -> int:
            obj = self.custom.patch_cluster_custom_object(GROUP, VERSION, "cidrdenylists", "bad",
                                                          {"spec": {"cidrs": prefixes(size, i + 1)}})
            return int(obj["metadata"]["generation"])
        return self.changes(f"CIDRDenyList edit ({size:,} prefixes, one replaced)", "cidrdenylists", "bad",
                            "U:cidr_deny_list:bad", n, write)


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="mbbench-prefilter-"))
    api = KubeApiServer(port=0, history_limit=200_000).start()
    op: OperatorProcess | None = None
    pool: SubscriberPool | None = None
    results: dict[str, Any] = {
        "config": vars(args) | {"out": str(args.out)},
        "machine": {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "kernel": platform.release(),
                    "cores": os.cpu_count(), "python": platform.python_version(), "loadavg_start": os.getloadavg()}}
    try:
        Objects(api).add_named_nodes([f"bench-node-{i}" for i in range(args.nodes)])
        op = OperatorProcess(api.url, workdir)
        op.wait_ready()
        pool = SubscriberPool(f"unix:{op.socket}", args.nodes, args.processes)
        pool.wait_synced(120)
        bench = Bench(api, op, pool, args.nodes)
        bench.custom.create_cluster_custom_object(GROUP, VERSION, "packetfilters", packet_filter(9999))
        bench._wait_status("packetfilters", "cve", 1)
        log(f"{args.nodes} nodes subscribed, first filter enforced everywhere")
        results["changes"] = [bench.filter_edits(args.changes), bench.sanity_switch(max(4, args.changes // 4)),
                              bench.deny_list_edits(max(4, args.changes // 4), args.deny_prefixes)]
        results["subscribers"] = pool.stats()
        results["machine"]["loadavg_end"] = os.getloadavg()
        bench.api_client.close()
    finally:
        if pool is not None:
            pool.stop()
        if op is not None:
            op.stop()
        api.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def markdown(r: dict[str, Any]) -> str:
    cfg, machine = r["config"], r["machine"]
    lines = [
        "# Prefilter: apply to enforced on every node", "",
        f"Run {machine['date']} on {machine['cores']} cores (kernel {machine['kernel']}, Python "
        f"{machine['python']}); load average {machine['loadavg_start'][0]:.1f} at the start, "
        f"{machine.get('loadavg_end', [0])[0]:.1f} at the end (the machine is shared: medians and p99 of "
        f"one run, no comparison across runs). `python -m tests.bench.prefilter_propagation`.", "",
        f"{cfg['nodes']} simulated nodes ({cfg['processes']} subscriber processes, one gRPC connection per "
        "node), the real `membrane-operator` (plaintext stream, as in bench-results/operator.md), the API "
        "stand-in validating each object against the CRD's schema. A node acks once it has turned the "
        "records into the datapath's encoded rules and deny entries (the map writes are left out: the XDP "
        "datapath's own benchmarks measure them).", "",
        "| change | n | every node acked p50 | p99 | max | status shows N/N p50 | p99 | first node p50 | "
        "bytes per change (all nodes) | operator CPU per change | CPU per node per change |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in r["changes"]:
        lines.append(f"| {c['change']} | {c['n']} | {c['p50_ms']:.0f} ms | {c['p99_ms']:.0f} ms | "
                     f"{c['max_ms']:.0f} ms | {c['status_p50_ms']:.0f} ms | {c['status_p99_ms']:.0f} ms | "
                     f"{c['first_node_p50_ms']:.0f} ms | {int(c['bytes_per_change']):,} | "
                     f"{c['operator_cpu_s_per_change'] * 1000:.0f} ms | {c['node_convert_ms']:.1f} ms |")
    edits = r["changes"][0]
    deny = r["changes"][-1]
    goal = "met" if edits["p99_ms"] < 1000 else "NOT met"
    deny_goal = "met" if deny["p99_ms"] < 1000 else "NOT met"
    lines += ["", f"Goal (p99 < 1 s at 100 agents): PacketFilter edits **{goal}** "
              f"({edits['p99_ms']:.0f} ms at {cfg['nodes']} nodes); a one-prefix edit of a "
              f"{cfg['deny_prefixes']:,}-prefix CIDRDenyList **{deny_goal}** ({deny['p99_ms']:.0f} ms).", "",
              "- *every node acked*: from just before the API write to the last node's ack of the stream "
              "version carrying the change (CLOCK_MONOTONIC across processes). An ack means the node "
              "enforces it (in the real agent: the maps are written and the rule set switched).",
              "- *CPU per node per change*: what one node spends turning the records into the datapath's "
              "rules and prefixes before it acks. Here every simulated node does it on the same "
              f"{machine['cores']} cores, one after another: nodes x this is added to *every node acked* "
              "(a real node spends it on its own CPU, in parallel with the others; *first node* is closer "
              "to what one node sees).",
              "- *status shows N/N*: until a reader of the object sees `status.enforced` N/N at the new "
              "`status.enforcedGeneration` (the operator's coalesced status pass, the status write, the "
              "watch; polled every 10 ms), which is what `kubectl wait --for=jsonpath='{.status."
              "enforcedGeneration}'=G` waits for.", "",
              f"**CIDR deny lists travel in chunks** (membrane/prefilter_chunking.py): the operator splits "
              f"a list by a stable hash of each prefix into 64 chunk records plus a head record (generation "
              f"and digest), so replacing one prefix of {cfg['deny_prefixes']:,} streams the head and the one "
              f"or two chunks it touched ({deny['bytes_per_change'] / cfg['nodes'] / 1024:.1f} KiB per node) "
              f"and each node re-converts only those chunks and joins the list's chunks "
              f"({deny['node_convert_ms']:.1f} ms). The operator still spends "
              f"{deny['operator_cpu_s_per_change'] * 1000:.0f} ms per change decoding, checking and "
              f"canonicalizing the whole object it is given (once, not per node)."]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    slim = {**results, "changes": [{k: v for k, v in c.items() if k != "samples"} for c in results["changes"]]}
    (out / "prefilter-propagation.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(slim)
    (out / "prefilter-propagation.md").write_text(text)
    return text


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--processes", type=int, default=4, help="subscriber processes")
    ap.add_argument("--changes", type=int, default=40, help="PacketFilter edits timed")
    ap.add_argument("--deny-prefixes", type=int, default=10000)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    print(write(run(args), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
