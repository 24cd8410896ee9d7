"""Policy benchmark: per-packet cost vs number of rules, computation at scale, apply-to-enforced.

1. Same-node TCP latency (sockperf ping-pong) and new-connection rate with 0, 100 and 10,000
   rules, side by side: membrane (real agent in a lab node; one NetworkPolicy selecting the
   server with N ipBlock /32 peers plus the client) and the bridge reference with the
   iptables equivalent in the node netns's FORWARD chain (br_netfilter: bridged traffic
   traverses it): ESTABLISHED first, then N non-matching source rules, then the client's
   allow rule, then DROP (kube-router / Calico-iptables style: every new connection walks
   the list).
2. The pure engine: 1,000 policies over 10,000 pods (`policy_scale`).
3. Apply-to-enforced on a real agent whose store holds 10,000 Pods and 1,000 policies: a
   prober in the client pod starts a connection every 2 ms; after each `apply` of one policy
   change (allow / deny the client), the time until every later attempt sees the new verdict.

Everything is `mbbench-*` namespaces, removed at the end even on error.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode, tool

from . import measuring, policy_scale
from .plugins import CniPlugin
from .setups import PREFIX, BridgeReference, Endpoint, Membrane
from .stats import median

RULE_COUNTS = (0, 100, 10_000)
CONN_PORT = 7100
LAT_PORT = 11111
PROBE = str(Path(__file__).with_name("conn_probe.py"))
TARGET_FLAT = 0.10  # latency within 10 % from 0 to 10,000 rules
TARGET_APPLY_MS = 100.0


def log(msg: str) -> None:
    print(f"[policy-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cidr(i: int) -> str:
    return f"172.{16 + i // 65536}.{(i // 256) % 256}.{i % 256}/32"


def pod_object(name: str, app: str, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}


def rules_policy(n: int) -> dict[str, Any]:
    """One policy selecting the server: N ipBlock peers (never our traffic) plus the client."""
    peers: list[dict[str, Any]] = [{"ipBlock": {"cidr": cidr(i)}} for i in range(n)]
    peers.append({"podSelector": {"matchLabels": {"app": "client"}}})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "rules", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                     "ingress": [{"from": peers, "ports": [{"port": LAT_PORT}, {"port": CONN_PORT}]}]}}


def gate_policy(allow: bool) -> dict[str, Any]:
    source = "client" if allow else "nobody"
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "gate", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": source}}}],
                                  "ports": [{"port": CONN_PORT}]}]}}


class PolicyMembrane(Membrane):
    """The membrane setup on its own node name, with labelled client and server Pods."""

    def __init__(self) -> None:
        self.node = LabNode("mbpol", pod_cidr="10.212.0.0/24", prefix=PREFIX)
        self.settle_seconds = 0.5
        self.idle_rss_kib = None
        self.ready_seconds = None
        self.plugin = CniPlugin(name="membrane-cni", argv=(tool("membrane-cni"),), conf=self.node.net_conf(),
                                cni_path="/opt/cni/bin", netns_prefix=f"{self.node.netns}-")
        self.rule_count = 0

    def create(self) -> None:
        self.node.create()
        self.node.start_agent()
        self.node.api("apply", objects=[pod_object("client", "client"), pod_object("server", "server")])
        client, server = self.node.add_pod("client"), self.node.add_pod("server")
        self.client, self.server = Endpoint(client.netns, client.ip), Endpoint(server.netns, server.ip)

    def set_rules(self, n: int) -> float:
        """Returns the seconds the agent took to apply (API round trip)."""
        started = time.perf_counter()
        if n == 0:
            if self.rule_count:
                self.node.api("delete", objects=[rules_policy(0)])
        else:
            self.node.api("apply", objects=[rules_policy(n)])
        self.rule_count = n
        return time.perf_counter() - started


class IptablesBridge(BridgeReference):
    """The bridge reference with N iptables rules in the node netns's FORWARD chain (own names,
    so it can run next to the foundation benchmark's bridge)."""

    def __init__(self, subnet: str = "10.203.0.0/24") -> None:
        super().__init__(subnet)
        self.node = f"{PREFIX}-ipt-node"
        conf = dict(self.plugin.conf)
        conf["name"] = "mbbench-ipt"
        self.plugin = CniPlugin(name="bridge", argv=("ip", "netns", "exec", self.node, f"{self.plugin_dir}/bridge"),
                                conf=conf, cni_path=self.plugin_dir, netns_prefix=f"{PREFIX}-ipt-pod-")

    def container_id(self, pod: str) -> str:
        return f"mbbench-ipt-{pod}"

    def create(self) -> None:
        super().create()
        netns.exec_in(self.node, ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"], check=False)
        self.nf_call = netns.exec_in(self.node, ["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"],
                                     check=False).stdout.strip() or None

    def set_rules(self, n: int) -> float:
        started = time.perf_counter()
        lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
        if n:
            dst = f"{self.server.ip}/32"
            lines.append("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT")
            lines += [f"-A FORWARD -s {cidr(i)} -d {dst} -p tcp -j ACCEPT" for i in range(n)]
            lines.append(f"-A FORWARD -s {self.client.ip}/32 -d {dst} -p tcp -j ACCEPT")
            lines.append(f"-A FORWARD -d {dst} -j DROP")
        lines.append("COMMIT")
        subprocess.run(["ip", "netns", "exec", self.node, "iptables-restore"], input="\n".join(lines) + "\n",
                       text=True, check=True, capture_output=True, timeout=120)
        return time.perf_counter() - started

    def forward_rules(self) -> int:
        out = netns.exec_in(self.node, ["iptables", "-S", "FORWARD"]).stdout
        return sum(1 for line in out.splitlines() if line.startswith("-A FORWARD"))


def conn_rate(server: Endpoint, client: Endpoint, seconds: float) -> dict[str, Any]:
    proc = netns.popen_in(server.netns, [sys.executable, PROBE, "serve", server.ip, str(CONN_PORT)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        measuring._wait_listening(server, CONN_PORT, proc)
        out = netns.exec_in(client.netns, [sys.executable, PROBE, "rate", server.ip, str(CONN_PORT), str(seconds)],
                            timeout=seconds + 30).stdout
        return json.loads(out)
    finally:
        measuring._stop(proc)


def rules_sweep(mb: PolicyMembrane, ref: IptablesBridge, reps: int, seconds: int) -> dict[str, Any]:
    """Each repetition walks every rule count on both setups (A,B per count), so slow drifts of
    the shared machine's load spread over all counts instead of biasing one."""
    setups = {"membrane": mb, "iptables (bridge)": ref}
    out: dict[str, Any] = {name: {str(n): {"apply_s": [], "latency": [], "rate": [], "errors": []}
                                  for n in RULE_COUNTS} for name in setups}
    for rep in range(reps):
        for n in RULE_COUNTS:
            for name, s in setups.items():
                cell = out[name][str(n)]
                try:
                    cell["apply_s"].append(s.set_rules(n))
                    if isinstance(s, IptablesBridge):
                        cell["forward_rules"] = s.forward_rules()
                    measuring.latency(s.server, s.client, seconds=1, port=LAT_PORT)  # warm-up, reachability
                    cell["latency"].append(vars(measuring.latency(s.server, s.client, seconds, LAT_PORT)))
                    cell["rate"].append(conn_rate(s.server, s.client, seconds))
                except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                    cell["errors"].append(f"{type(exc).__name__}: {exc}"[:400])
            log(f"rep {rep + 1}/{reps}: {n} rules done")
    for cells in out.values():
        for cell in cells.values():
            cell["latency_p50_us"] = median([x["p50_us"] for x in cell["latency"]])
            cell["latency_avg_us"] = median([x["avg_us"] for x in cell["latency"]])
            cell["conn_per_s"] = median([x["per_second"] for x in cell["rate"]])
            cell["apply_s"] = max(cell["apply_s"]) if cell["apply_s"] else None
    mb.set_rules(0)
    ref.set_rules(0)
    return out


def _load_scale(node: LabNode, batch: int = 500) -> dict[str, Any]:
    """10,000 Pods and 1,000 policies into the agent's store, through the API in batches."""
    timings = []
    objects = [policy_scale.namespace_obj(n) for n in range(policy_scale.NAMESPACES)]
    objects += [policy_scale.pod_obj(i) for i in range(policy_scale.PODS)]
    objects += [policy_scale.policy_obj(j) for j in range(policy_scale.POLICIES)]
    started = time.perf_counter()
    for k in range(0, len(objects), batch):
        t = time.perf_counter()
        node.api("apply", objects=objects[k:k + batch])
        timings.append(time.perf_counter() - t)
    return {"objects": len(objects), "batch": batch, "load_s": time.perf_counter() - started,
            "batch_apply_p50_s": median(timings), "batch_apply_max_s": max(timings)}


def apply_to_enforced(mb: PolicyMembrane, changes: int, gap: float = 0.6) -> dict[str, Any]:
    log("loading 10,000 pods and 1,000 policies into the agent's store")
    out: dict[str, Any] = _load_scale(mb.node)
    mb.node.api("apply", objects=[gate_policy(False)])
    server = netns.popen_in(mb.server.netns, [sys.executable, PROBE, "serve", mb.server.ip, str(CONN_PORT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    watcher = None
    attempts_file = tempfile.TemporaryFile()  # a pipe could fill up and stall the prober
    try:
        measuring._wait_listening(mb.server, CONN_PORT, server)
        watcher = netns.popen_in(mb.client.netns, [sys.executable, PROBE, "watch", mb.server.ip, str(CONN_PORT), "2", "100"],
                                 stdin=subprocess.PIPE, stdout=attempts_file, stderr=subprocess.DEVNULL)
        time.sleep(gap)
        marks = []
        for i in range(changes):
            allow = i % 2 == 0
            t0 = time.monotonic()
            mb.node.api("apply", objects=[gate_policy(allow)])
            marks.append((t0, time.monotonic(), allow))
            time.sleep(gap)
        watcher.communicate(input=b"", timeout=30)
        attempts_file.seek(0)
        raw = attempts_file.read()
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait(5)
        measuring._stop(server)
        attempts_file.close()
    attempts = sorted(tuple(json.loads(line)) for line in raw.decode().splitlines() if line.strip())
    samples, api, missed = [], [], 0
    for i, (t0, t1, allow) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else float("inf")
        window = [(start, ok) for start, ok in attempts if t0 <= start < end - 0.15]  # settled attempts only
        api.append((t1 - t0) * 1000)
        first = next((k for k in range(len(window)) if all(ok == allow for _, ok in window[k:])), None)
        if first is None or not window:
            missed += 1
            continue
        samples.append((window[first][0] - t0) * 1000)
    out.update({"changes": changes, "probe_interval_ms": 2, "attempts": len(attempts),
                "enforced_ms": [round(x, 2) for x in samples], "enforced_p50_ms": median(samples),
                "enforced_max_ms": max(samples) if samples else None, "api_roundtrip_p50_ms": median(api),
                "missed": missed})
    return out


PARTS = ("engine", "rules", "enforce")


def run(reps: int = 5, seconds: int = 3, changes: int = 10, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    results: dict[str, Any] = {"config": {"reps": reps, "seconds": seconds, "changes": changes,
                                          "rule_counts": list(RULE_COUNTS), "parts": list(parts)}}
    if "engine" in parts:
        log("pure engine: 1,000 policies over 10,000 pods")
        results["engine"] = policy_scale.engine()
        log("agent policy manager (fake maps): 1,000 policies over 10,000 pods, 20 local endpoints")
        results["agent_pure"] = policy_scale.agent()
    if "rules" not in parts and "enforce" not in parts:
        results["targets"] = targets(results)
        return results
    mb, ref = PolicyMembrane(), IptablesBridge(subnet="10.203.0.0/24")
    try:
        for s in (mb, ref):
            log(f"creating {s.name}")
            s.create()
        results["bridge_nf_call_iptables"] = ref.nf_call
        if "rules" in parts:
            results["rules"] = rules_sweep(mb, ref, reps, seconds)
        if "enforce" in parts:
            results["apply_to_enforced"] = apply_to_enforced(mb, changes)
    finally:
        for s in (ref, mb):
            try:
                s.destroy()
            except Exception as exc:  # noqa: BLE001
                log(f"destroy {s.name}: {exc}")
    results["leftovers"] = netns.listed(f"{PREFIX}-")
    results["targets"] = targets(results)
    return results


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    mb = results.get("rules", {}).get("membrane", {})
    lo, hi = (mb.get(str(n), {}).get("latency_p50_us") for n in (RULE_COUNTS[0], RULE_COUNTS[-1]))
    change = (hi / lo - 1) if lo and hi else None
    rows.append({"name": "membrane latency p50, 10,000 rules vs 0", "value": change, "unit": "change",
                 "target": f"within +/-{TARGET_FLAT:.0%}", "met": None if change is None else abs(change) <= TARGET_FLAT})
    eng = results.get("engine", {})
    rows.append({"name": "engine: 1,000 policies over 10,000 pods (all endpoints)", "value": eng.get("total_s"),
                 "unit": "s", "target": "seconds, not minutes (< 10 s)",
                 "met": None if eng.get("total_s") is None else eng["total_s"] < 10})
    ag = results.get("agent_pure", {})
    rows.append({"name": "agent (fake maps): one policy change + apply", "value": ag.get("one_change_ms"),
                 "unit": "ms", "target": f"< {TARGET_APPLY_MS:.0f} ms",
                 "met": None if ag.get("one_change_ms") is None else ag["one_change_ms"] < TARGET_APPLY_MS})
    ate = results.get("apply_to_enforced", {})
    p50 = ate.get("enforced_p50_ms")
    rows.append({"name": "real agent: apply-to-enforced, one change at scale (p50)", "value": p50, "unit": "ms",
                 "target": f"< {TARGET_APPLY_MS:.0f} ms", "met": None if p50 is None else p50 < TARGET_APPLY_MS})
    return rows


def _f(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = ["# Policy benchmark", ""]
    lines += ["## Targets", "", "| target | result | wanted | met? |", "|---|---:|---|---|"]
    for t in results.get("targets", []):
        value = t["value"]
        shown = "n/a" if value is None else (f"{value:+.1%}" if t["unit"] == "change" else f"{value:.2f} {t['unit']}")
        met = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        lines.append(f"| {t['name']} | {shown} | {t['target']} | {met} |")
    rules = results.get("rules", {})
    if rules:
        lines += ["", f"## Per-packet and per-connection cost vs number of rules "
                  f"(medians of {cfg['reps']} interleaved runs of {cfg['seconds']} s)", "",
                  "| setup | rules | latency p50 (us) | latency avg (us) | p50 vs 0 rules | new connections/s | vs 0 rules | rules applied in (s, max) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, cells in rules.items():
            base = cells.get("0", {})
            for n, c in cells.items():
                lat, rate = c.get("latency_p50_us"), c.get("conn_per_s")
                r_lat = f"{lat / base['latency_p50_us']:.2f}x" if lat and base.get("latency_p50_us") else "n/a"
                r_rate = f"{rate / base['conn_per_s']:.2f}x" if rate and base.get("conn_per_s") else "n/a"
                lines.append(f"| {name} | {int(n):,} | {_f(lat, 2)} | {_f(c.get('latency_avg_us'), 2)} | {r_lat} "
                             f"| {_f(rate, 0)} | {r_rate} | {_f(c.get('apply_s'), 2)} |")
        errors = [f"- {name} {n}: {e}" for name, cells in rules.items() for n, c in cells.items() for e in c.get("errors", [])]
        if errors:
            lines += ["", "Failed measurements:", *errors]
        lines += ["", f"membrane: one NetworkPolicy selecting the server, N ipBlock /32 peers + the client, "
                  f"ports {LAT_PORT} and {CONN_PORT} (LPM policy map and ipcache: one lookup per new flow, "
                  f"whatever N). iptables: the bridge reference's node netns, FORWARD = ESTABLISHED accept, "
                  f"N `-s <cidr> -d server -p tcp -j ACCEPT`, client accept, DROP "
                  f"(bridge-nf-call-iptables = {results.get('bridge_nf_call_iptables')}). "
                  "Latency is one long TCP connection (established: conntrack short-cuts both); "
                  "the connection rate is connect + RST-close in a Python loop (each SYN walks the rules)."]
    eng, ag = results.get("engine"), results.get("agent_pure")
    if eng:
        lines += ["", "## Policy computation: 1,000 policies over 10,000 pods (pure, no root)", "",
                  "| path | pods in | policies in | compute | total | one policy change |", "|---|---:|---:|---:|---:|---:|",
                  f"| engine, every pod an endpoint ({eng['endpoints']:,} endpoints, {eng['entries']:,} entries) "
                  f"| {_f(eng['ingest_pods_s'], 2)} s | {_f(eng['ingest_policies_s'], 2)} s | {_f(eng['compute_s'], 2)} s "
                  f"| {_f(eng['total_s'], 2)} s | {_f(eng['one_change_s'] * 1000, 1)} ms |"]
        if ag:
            lines.append(f"| agent manager, 20 local endpoints, fake maps | {_f(ag['ingest_pods_s'], 2)} s "
                         f"| {_f(ag['ingest_policies_s'], 2)} s | {_f(ag['first_apply_s'], 2)} s (first apply) "
                         f"| {_f(ag['total_s'], 2)} s | {_f(ag['one_change_ms'], 1)} ms (incl. apply) |")
        lines += ["", f"From-scratch `compute_policy` of the same state: {_f(eng['from_scratch_s'], 2)} s. "
                  "Pods are parsed from Kubernetes objects before timing; the agent path includes identity "
                  "allocation and the ipcache."]
    ate = results.get("apply_to_enforced")
    if ate:
        lines += ["", "## Apply-to-enforced on a real agent at scale", "",
                  f"Store: {ate['objects']:,} objects (50 Namespaces, 10,000 Pods, 1,000 NetworkPolicies) applied "
                  f"in batches of {ate['batch']} in {_f(ate['load_s'], 1)} s (batch p50 {_f(ate['batch_apply_p50_s'], 2)} s). "
                  f"Then {ate['changes']} changes of one policy (allow / deny the client pod), a new connection "
                  f"attempt every {ate['probe_interval_ms']} ms from the client pod:", "",
                  "| apply-to-enforced p50 | max | apply API round trip p50 | changes not observed |",
                  "|---:|---:|---:|---:|",
                  f"| {_f(ate['enforced_p50_ms'], 1)} ms | {_f(ate['enforced_max_ms'], 1)} ms "
                  f"| {_f(ate['api_roundtrip_p50_ms'], 1)} ms | {ate['missed']} |", "",
                  f"Samples (ms): {ate['enforced_ms']}. Enforced = start of the first attempt from which every "
                  "later attempt sees the new verdict, minus the time `apply` was called (resolution: the "
                  "probe interval)."]
    lines += ["", "Raw values: `policy.json`."]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "policy.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / "policy.md").write_text(text)
    return text


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="policy benchmark (root)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ",".join(PARTS))
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    a = ap.parse_args()
    print(write(run(a.reps, a.seconds, a.changes, tuple(a.parts.split(","))), a.out))
