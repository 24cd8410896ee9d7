"""Observability benchmark: what flow events cost the datapath, and how many flows the agent
decodes and serves.

Two lab nodes side by side, identical but for `--no-flow-events` on one of them: same objects
(a namespace, a client and a server pod, a NetworkPolicy that allows client -> server), same
traffic. Three variants, measured interleaved (A B C, C B A, ...): the events node with events
on; the same node with events switched off at runtime (the event-config map the agent writes
at start; this comparison has no node-to-node difference in it); the `--no-flow-events` node:

- latency: sockperf TCP ping-pong (one long connection: events only at its start);
- throughput: iperf3, one TCP stream;
- connection rate: short TCP connections (connect, 1 byte back, close), the case where events
  are emitted (one per new connection and direction), up to the kernel rate limit.

Then flows per second:

- in process, no kernel (`tests/bench/flows_rate.py`): decode + enrich + store, and GetFlows;
- end to end: a UDP flood to a pod whose ingress is denied, every packet a new flow (no drop
  aggregation helps): events the agent delivered as flows per second, with the kernel's
  default rate limit and with the limit raised out of the way (written to the pinned
  event-config map, the same switch the agent uses), so the pipeline's own ceiling shows.

Run as root from the repo root: `python -m tests.bench.observability_bench` (also called by
`python -m tests.bench.run`). Writes `bench-results/observability.{json,md}`. Everything lives
in `mbbench-obs*` namespaces, removed at the end even on error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from membrane_testkit.lab import netns
from membrane_testkit.lab.node import LabNode

from . import flows_rate, measuring
from .setups import PREFIX, Endpoint
from .stats import median, ratio

NS = "bench"
LIMIT_RATIO = 0.05  # the issue: under 5% difference events on vs off


def log(msg: str) -> None:
    print(f"[obs-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the two nodes ---------------------------------------------------------------------------------

def objects(namespace: str = NS) -> list[dict[str, Any]]:
    pod = lambda name: {"apiVersion": "v1", "kind": "Pod",  # noqa: E731
                        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
                        "spec": {"containers": [{"name": "c", "image": "i"}]}}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        pod("client"), pod("server"),
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
         "metadata": {"name": "server-from-client", "namespace": namespace},
         "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}},
    ]


class ObsNode:
    """A lab node with a client and a server pod, flow events on or off."""

    def __init__(self, events: bool, pod_cidr: str) -> None:
        self.events = events
        self.name = ON if events else OFF_FLAG
        self.node = LabNode("obs-on" if events else "obs-off", pod_cidr=pod_cidr, prefix=PREFIX,
                            extra_args=[] if events else ["--no-flow-events"])
        self.client = self.server = Endpoint("", "")

    def create(self) -> None:
        self.node.create()
        self.node.start_agent()
        self.node.api("apply", objects=objects())
        client, server = self.node.add_pod("client", NS), self.node.add_pod("server", NS)
        self.client, self.server = Endpoint(client.netns, client.ip), Endpoint(server.netns, server.ip)

    def destroy(self) -> None:
        self.node.destroy()

    def scrape(self) -> str:
        return netns.exec_in(self.node.netns, ["curl", "-sf", "http://127.0.0.1:9962/metrics"]).stdout

    def agent_cpu_seconds(self) -> float:
        """CPU time (user + system) the agent process has used so far."""
        assert self.node.process is not None
        fields = Path(f"/proc/{self.node.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if (line.startswith((name + "{", name + " "))) and \
                all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- connection rate -------------------------------------------------------------------------------

CONN_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4096)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"x")
    finally:
        c.close()
"""

CONN_CLIENT = r"""
import socket, struct, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT eats the client's ports
n = errors = 0
end = time.monotonic() + seconds
start = time.monotonic()
while time.monotonic() < end:
    s = socket.socket()
    try:
        s.connect((host, port))
        if s.recv(1) == b"x":
            n += 1
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    except OSError:
        errors += 1
    finally:
        s.close()
print(n, errors, round(time.monotonic() - start, 4))
"""


def connection_rate(server: Endpoint, client: Endpoint, seconds: float, port: int = 12345) -> dict[str, float]:
    """New TCP connections per second, one client process (connect, read 1 byte, close)."""
    proc = netns.popen_in(server.netns, [sys.executable, "-c", CONN_SERVER, server.ip, str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        measuring._wait_listening(server, port, proc)
        out = netns.exec_in(client.netns, [sys.executable, "-c", CONN_CLIENT, server.ip, str(port), str(seconds)],
                            timeout=seconds + 30).stdout.split()
    finally:
        measuring._stop(proc)
    n, errors, elapsed = int(out[0]), int(out[1]), float(out[2])
    return {"connections": n, "errors": errors, "seconds": elapsed, "per_second": n / elapsed}


# --- side-by-side traffic --------------------------------------------------------------------------

class Variant:
    """What one measurement runs on: a node, and for the events-on node the runtime switch's
    position (None: leave the agent's own setting)."""

    def __init__(self, name: str, node: ObsNode, switch: bool | None = None) -> None:
        self.name, self.node, self.switch = name, node, switch
        self.client, self.server = node.client, node.server

    def prepare(self) -> None:
        if self.switch is not None:
            from membrane.agent.datapath.events import EVENTS_BURST, EVENTS_RATE_PER_SEC

            set_event_config(self.node.node, self.switch, EVENTS_RATE_PER_SEC, EVENTS_BURST)

    def scrape(self) -> str:
        return self.node.scrape()

    def agent_cpu_seconds(self) -> float:
        return self.node.agent_cpu_seconds()


def traffic(nodes: list[Variant], reps: int, seconds: int) -> dict[str, dict[str, Any]]:
    """Each repetition runs every kind on every variant, order alternating (A B C, C B A, ...)."""
    kinds = {"latency": lambda s, c: vars(measuring.latency(s, c, seconds)),
             "throughput": lambda s, c: vars(measuring.throughput(s, c, seconds)),
             "connections": lambda s, c: connection_rate(s, c, seconds)}
    out: dict[str, dict[str, Any]] = {n.name: {k: [] for k in kinds} | {"errors": [], "events": []}
                                      for n in nodes}
    for rep in range(reps):
        order = nodes if rep % 2 == 0 else list(reversed(nodes))
        for kind, fn in kinds.items():
            for n in order:
                log(f"rep {rep + 1}/{reps} {kind} {n.name}")
                try:
                    n.prepare()
                    before = n.scrape() if kind == "connections" else ""
                    cpu_before, wall_before = n.agent_cpu_seconds(), time.monotonic()
                    out[n.name][kind].append(fn(n.server, n.client))
                    out[n.name][kind][-1]["agent_cpu_percent"] = \
                        100 * (n.agent_cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
                    if kind == "connections":
                        time.sleep(1.2)  # the observer folds kernel loss counters in every second
                        after = n.scrape()
                        delta = lambda name, **kw: metric(after, name, **kw) - metric(before, name, **kw)  # noqa: E731
                        out[n.name]["events"].append({
                            "flows_processed": delta("membrane_flows_processed_total"),
                            "rate_limited": delta("membrane_flow_events_lost_total", reason="rate_limited"),
                            "ringbuf_full": delta("membrane_flow_events_lost_total", reason="ringbuf_full"),
                            "connections": out[n.name][kind][-1]["connections"]})
                except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                    out[n.name]["errors"].append(f"{kind}: {exc}"[:500])
    for data in out.values():
        data["latency_p50_us"] = median([x["p50_us"] for x in data["latency"]])
        data["latency_p99_us"] = median([x["p99_us"] for x in data["latency"]])
        data["throughput_gbps"] = median([x["gbps"] for x in data["throughput"]])
        data["connections_per_second"] = median([x["per_second"] for x in data["connections"]])
        data["agent_cpu_percent"] = {k: median([x["agent_cpu_percent"] for x in data[k]]) for k in kinds}
        ev = data["events"]
        data["flows_per_connection"] = median([e["flows_processed"] / e["connections"] for e in ev if e["connections"]])
        data["events_rate_limited_share"] = median(
            [e["rate_limited"] / (e["rate_limited"] + e["flows_processed"]) for e in ev
             if e["rate_limited"] + e["flows_processed"]])
    return out


ON, OFF_FLAG, OFF_SWITCH = "events on", "events off (--no-flow-events node)", "events off (switched off, same node)"


def targets(t: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    on = t.get(ON, {})
    rows = []
    for off_name, short in ((OFF_SWITCH, "same node switched off"), (OFF_FLAG, "--no-flow-events node")):
        off = t.get(off_name, {})
        rows += [(f"latency p50, on / off ({short})", on.get("latency_p50_us"), off.get("latency_p50_us"), "<=",
                  1 + LIMIT_RATIO),
                 (f"throughput, on / off ({short})", on.get("throughput_gbps"), off.get("throughput_gbps"), ">=",
                  1 - LIMIT_RATIO),
                 (f"new connections/s, on / off ({short})", on.get("connections_per_second"),
                  off.get("connections_per_second"), ">=", 1 - LIMIT_RATIO)]
    out = []
    for name, a, b, op, limit in rows:
        value = ratio(a, b)
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        out.append({"name": name, "value": value, "target": f"{op} {limit:g}", "met": met})
    return out


# --- end to end: a flood of new flows --------------------------------------------------------------

FLOOD = r"""
import socket, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"x" * 16
n = 0
end = time.monotonic() + seconds
start = time.monotonic()
while time.monotonic() < end:
    for _ in range(200):
        s.sendto(payload, (host, 1024 + n % 60000))  # every port a new flow: no aggregation helps
        n += 1
print(n, round(time.monotonic() - start, 4))
"""


class BpfAttrObjGet(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


class BpfAttrMapElem(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


def set_event_config(node: LabNode, enabled: bool, rate_per_sec: int, burst: int) -> None:
    """Write the pinned event-config map the way `Datapath.set_event_config` does.

    The pin is reached through the agent's root: an agent that had to mount its own bpffs
    (no access to the host's from its mount namespace) has pins only it can see."""
    from membrane.agent.datapath.events import EVENTS_AGGREGATE_MS, EventConfig
    from membrane.agent.datapath.layout import EVENT_CONFIG
    from membrane.agent.datapath.syscalls import bpf

    pin = node.pin_root / EVENT_CONFIG.name
    if not pin.exists() and node.process is not None:
        pin = Path(f"/proc/{node.process.pid}/root{pin}")
    path = ctypes.create_string_buffer(str(pin).encode())
    fd = bpf(7, BpfAttrObjGet(pathname=ctypes.addressof(path)))  # BPF_OBJ_GET
    try:
        key = ctypes.c_uint32(0)
        value = EventConfig(enabled, rate_per_sec, burst, EVENTS_AGGREGATE_MS).to_struct()
        bpf(2, BpfAttrMapElem(map_fd=fd, key=ctypes.addressof(key), value=ctypes.addressof(value)))  # UPDATE_ELEM
    finally:
        os.close(fd)


def flood(node: ObsNode, seconds: float) -> dict[str, Any]:
    """Flood the denied target; returns packets sent and flows the agent delivered (until it drained)."""
    pods = node.node.pods
    before = node.scrape()
    out = netns.exec_in(pods["flooder"].netns, [sys.executable, "-c", FLOOD, pods["target"].ip, str(seconds)],
                        timeout=seconds + 60).stdout.split()
    sent, elapsed = int(out[0]), float(out[1])
    sent_done = time.monotonic()
    # Wait until the agent has drained the ring buffer: flows processed stops rising.
    last, after = -1.0, before
    while True:
        time.sleep(1.2)
        after = node.scrape()
        now = metric(after, "membrane_flows_processed_total")
        if now == last:
            break
        last = now
    drained_s = time.monotonic() - sent_done - 1.2  # the last rise happened within the final interval
    delta = lambda name, **kw: metric(after, name, **kw) - metric(before, name, **kw)  # noqa: E731
    flows = delta("membrane_flows_processed_total")  # every type: drops, policy verdicts, new flows
    return {"packets_sent": sent, "seconds": elapsed, "packets_per_second": sent / elapsed,
            "dropped_counted": delta("membrane_datapath_packets_total", reason="drop_policy_ingress"),
            "flows_delivered": flows, "flows_per_second": flows / elapsed,
            "drop_flows_delivered": delta("membrane_flows_processed_total", type="drop"),
            "rate_limited": delta("membrane_flow_events_lost_total", reason="rate_limited"),
            "ringbuf_full": delta("membrane_flow_events_lost_total", reason="ringbuf_full"),
            "drain_after_flood_s": round(max(0.0, drained_s), 1)}


def end_to_end(node: ObsNode, seconds: float) -> dict[str, Any]:
    from membrane.agent.datapath.events import EVENTS_BURST, EVENTS_RATE_PER_SEC

    node.node.api("apply", objects=[
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "flood"}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "target", "namespace": "flood",
         "labels": {"app": "target"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "closed",
         "namespace": "flood"}, "spec": {"podSelector": {"matchLabels": {"app": "target"}}, "ingress": []}},
    ])
    node.node.add_pod("flooder", "flood")
    node.node.add_pod("target", "flood")
    cpus = os.cpu_count() or 1
    out: dict[str, Any] = {"cpus": cpus, "default_rate_per_cpu": EVENTS_RATE_PER_SEC,
                           "default_burst_per_cpu": EVENTS_BURST}
    log(f"end-to-end flood, default kernel rate limit ({seconds:g} s)")
    res = flood(node, seconds)
    res["kernel_limit_flows"] = cpus * (EVENTS_BURST + EVENTS_RATE_PER_SEC * res["seconds"])
    out["default_limit"] = res
    time.sleep(3)  # the per-CPU buckets refill
    log(f"end-to-end flood, kernel rate limit raised out of the way ({seconds:g} s)")
    try:
        set_event_config(node.node, True, 50_000_000, 50_000_000)
        out["raised_limit"] = flood(node, seconds)
    finally:
        set_event_config(node.node, True, EVENTS_RATE_PER_SEC, EVENTS_BURST)
    return out


# --- report ----------------------------------------------------------------------------------------

def _f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{suffix}"


def markdown(r: dict[str, Any]) -> str:
    m, c = r["machine"], r["config"]
    lines = ["# Observability benchmark: the cost of flow events, and flows per second", "",
             f"- date: {m['date']}; run took {r['duration_s']} s (`python -m tests.bench.observability_bench`, "
             "or `make bench`)",
             f"- machine: kernel {m['kernel']}, {m['cores']} cores, load average at start "
             f"{' '.join(m['loadavg_at_start'])}; shared with other work, so numbers are noisy: compare the "
             "ratios of this run, not absolute numbers across runs", ""]
    if r.get("error"):
        lines += [f"**The run failed:** `{r['error']}`", ""]
    t = r.get("traffic") or {}
    lines += ["## Datapath cost: flow events on vs off (target: under 5% difference)", "",
              "Two lab nodes side by side, identical (a client and a server pod, a NetworkPolicy allowing "
              "client -> server) except that one agent runs with `--no-flow-events`. Three variants: the "
              "events node with events on; the same node with events switched off at runtime (the "
              "event-config map: no node-to-node difference in this comparison); the `--no-flow-events` "
              f"node. Medians of {c['reps']} interleaved runs of {c['seconds']} s each (order alternating).", "",
              "| target | result | met? |", "|---|---:|---|"]
    for row in r.get("targets", []):
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "**NO, missed**")
        lines.append(f"| {row['name']} {row['target']} | {_f(row['value'], 3)}x | {met} |")
    lines += ["", "| node | latency p50 (us) | latency p99 (us) | throughput (Gbit/s) | new connections/s | "
              "flows per connection | events rate-limited (conn test) | agent CPU during the connection test |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, d in t.items():
        lines.append(f"| {name} | {_f(d['latency_p50_us'])} | {_f(d['latency_p99_us'])} | {_f(d['throughput_gbps'])} "
                     f"| {_f(d['connections_per_second'], 0)} | {_f(d['flows_per_connection'])} "
                     f"| {_f(None if d['events_rate_limited_share'] is None else d['events_rate_limited_share'] * 100, 0, '%')} "
                     f"| {_f((d.get('agent_cpu_percent') or {}).get('connections'), 0, '% of a core')} |")
    a, b = t.get(OFF_SWITCH, {}), t.get(OFF_FLAG, {})
    spread = [(label, ratio(a.get(key), b.get(key))) for label, key in
              (("latency", "latency_p50_us"), ("throughput", "throughput_gbps"),
               ("new connections/s", "connections_per_second"))]
    if all(v is not None for _, v in spread):
        lines += ["", "Noise floor of this run: the two events-off variants (same datapath state, different "
                  "nodes) differ by " + ", ".join(f"{abs(v - 1) * 100:.1f}% in {label}" for label, v in spread)
                  + "; a difference of that size between on and off is not a measured cost."]
    errs = {n: d["errors"] for n, d in t.items() if d["errors"]}
    if errs:
        lines += ["", f"Errors: `{json.dumps(errs)[:1500]}`"]
    lines += ["", "Events are emitted per new connection (and per drop), never per packet of an established "
              "connection: the latency and throughput runs use one long TCP connection each, so they "
              "measure the per-packet cost of the events code path (a config map lookup), while the "
              "connection test makes the datapath emit one event per new connection and direction until "
              "the per-CPU token bucket runs dry, after which events are counted as rate limited. "
              "Whatever the connection rate, the kernel's rate limit bounds the flows the agent decodes "
              "(about 2,000/s here plus bursts), so the cost of events on the connection test is mostly the "
              "agent's CPU decoding them (last column), taken from the same two cores the pods use: on a "
              "2-core machine whose cores the test saturates, that is a visible share; on a real node it "
              "is a bounded few percent of one core. The observer pauses 20 ms after each poll that "
              "delivered events so a connection storm costs batches, not one wake-up per event "
              "(before that: 15-18% of a core here).", ""]
    fr = r.get("flows_rate")
    if fr:
        ing, sa, sf, su = fr["ingest"], fr["serve_all"], fr["serve_filtered"], fr["serve_unbatched"]
        lines += ["## Flows per second the agent can decode and serve", "",
                  "In process, synthetic records shaped like a busy node's (`tests/bench/flows_rate.py`, no kernel):", "",
                  "| stage | flows/s |", "|---|---:|",
                  f"| decode + enrich + count + store in the ring ({ing['flows']:,} records) | {ing['flows_per_second']:,} |",
                  f"| GetFlows over a unix socket, whole ring, batched ({sa['flows_received']:,} flows) | "
                  f"{sa['flows_per_second']:,} |",
                  f"| GetFlows with a filter (namespace + protocol): flows scanned | {sf['scanned_per_second']:,} |",
                  f"| GetFlows, one flow per message (older clients) | {su['flows_per_second']:,} |", ""]
    e2e = r.get("end_to_end")
    if e2e:
        lines += ["End to end (a real agent): a UDP flood from one pod to a pod whose ingress is denied, every "
                  "packet to a new port, so every packet is a new flow the datapath wants to report (the "
                  "sender's egress verdict, the receiver's ingress verdict and the drop: about 3 events per "
                  "packet). Flows delivered counts every type the agent decoded. Kernel default limit: "
                  f"{e2e['default_rate_per_cpu']:,} events/s per CPU, burst "
                  f"{e2e['default_burst_per_cpu']:,}, {e2e['cpus']} CPUs.", "",
                  "| kernel rate limit | packets/s sent | drops counted / sent | flows delivered | flows/s delivered | "
                  "rate limited | ring buffer full | agent drained after |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for key, label in (("default_limit", "default"), ("raised_limit", "raised (50M/s)")):
            x = e2e.get(key)
            if not x:
                continue
            lines.append(f"| {label} | {_f(x['packets_per_second'], 0)} | {_f(x['dropped_counted'], 0)} / "
                         f"{x['packets_sent']:,} | {_f(x['flows_delivered'], 0)} | {_f(x['flows_per_second'], 0)} | "
                         f"{_f(x['rate_limited'], 0)} | {_f(x['ringbuf_full'], 0)} | {x['drain_after_flood_s']} s |")
        d = e2e.get("default_limit")
        if d:
            lines += ["", f"With the default limit the agent received {_f(d['flows_delivered'], 0)} flows; the "
                      f"kernel bound over the flood is {_f(d['kernel_limit_flows'], 0)} (burst + rate x seconds, "
                      "every CPU; the flooder mostly runs on one). Every packet was still counted by the datapath "
                      "counters."]
        lines.append("")
    lines += ["Raw values: `observability.json`.", ""]
    return "\n".join(lines)


# --- driver ----------------------------------------------------------------------------------------

def _sigterm(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt


def run(reps: int = 5, seconds: int = 5, flood_seconds: float = 5.0, flows: int = 100_000) -> dict[str, Any]:
    from .run import machine_facts  # late: run.py imports this module too

    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine_facts(),
                               "config": {"reps": reps, "seconds": seconds, "flood_seconds": flood_seconds}}
    nodes = [ObsNode(True, "10.213.0.0/24"), ObsNode(False, "10.214.0.0/24")]
    try:
        for n in nodes:
            log(f"creating {n.name}")
            n.create()
            measuring.latency(n.server, n.client, seconds=1)  # reachability check and warm-up
        on, off = nodes
        variants = [Variant(ON, on, True), Variant(OFF_SWITCH, on, False), Variant(OFF_FLAG, off)]
        results["traffic"] = traffic(variants, reps, seconds)
        variants[0].prepare()  # leave the events node as the agent set it: on
        results["targets"] = targets(results["traffic"])
        log("flows/s in process (flows_rate)")
        results["flows_rate"] = flows_rate.run(flows)
        results["end_to_end"] = end_to_end(nodes[0], flood_seconds)
    except Exception as exc:  # noqa: BLE001 - report what was measured
        results["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        log(f"failed: {results['error']}")
    finally:
        for n in nodes:
            try:
                n.destroy()
            except Exception as exc:  # noqa: BLE001
                log(f"destroy {n.name}: {exc}")
        left = netns.listed(f"{PREFIX}-obs")
        if left:
            log(f"WARNING: left behind: {left}")
        results["leftovers"] = left
    results["duration_s"] = round(time.monotonic() - started, 1)
    return results


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "observability.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(results)
    (out / "observability.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5, help="duration of each latency/throughput/connection run")
    ap.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    ap.add_argument("--flood-seconds", type=float, default=5.0)
    ap.add_argument("--flows", type=int, default=100_000, help="synthetic records for the in-process rate")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    if netns.listed(f"{PREFIX}-obs"):
        print(f"refusing to start: {PREFIX}-obs* namespaces exist; `make clean-lab` removes leftovers",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _sigterm)
    results = run(args.reps, args.seconds, args.flood_seconds, args.flows)
    print(write(results, args.out))
    return 1 if results.get("error") else 0


if __name__ == "__main__":
    raise SystemExit(main())
