"""ClusterIP through membrane's socket hooks vs kube-proxy's iptables layout, in one run.

Two namespaces, each with the same two backends (addresses on lo, a server answering one byte
at accept) and a client that connects to the last-declared ClusterIP and reads the first byte:

- membrane: the socket hooks (bpf/bpf_sock.c) attached to a bench cgroup the client runs in,
  the lb4 maps written through the map manager in LB_ORDER (N services, 2 backends each);
- kube-proxy: the nat table laid out as kube-proxy's iptables mode lays it out
  (membrane_testkit/lab/kube_proxy.py: KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-* with statistic
  probabilities), N services, loaded with iptables-restore; the client outside any hooked cgroup.

Measured, side by side: connect-to-first-byte p50/p99 with 1, 1,000 and 10,000 services; bulk
throughput (iperf3) through the ClusterIP vs the backend's address; the time from one Service
change at 10,000 services to the maps written (LbManager.on_update + apply) vs kube-proxy's full
iptables-restore of the same table; the load balancer's Python heap per 1,000 services.

Run as root: `python -m tests.bench.services_bench` (or `make bench`, part `services`); writes
bench-results/services.{json,md}. Everything is named mbbench-*, removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from membrane.agent.datapath.cgroup_attaching import SOCK_HOOKS, attach_sock_hooks
from membrane.agent.datapath_port import DatapathPort
from membrane.agent.lb_port import LbMapPort
from membrane.agent.lb_syncing import LbManager
from membrane.agent.map_managing import MapManager
from membrane.api.state_objects import (
    EndpointPortState,
    EndpointSliceState,
    Kind,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
)
from membrane.lb_maps import LB_ORDER, LB_ROLES, LbIds, desired_contents
from membrane.services import service_table
from membrane_testkit.lab import cgroups, kube_proxy, netns

from .stats import median, percentile

PROBE = r"""
import socket, sys, time, json
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = []
for _ in range(n):
    t = time.perf_counter()
    s = socket.create_connection((ip, port), timeout=2)
    s.recv(1)
    out.append((time.perf_counter() - t) * 1e6)
    s.close()
print(json.dumps(out))
"""
SERVER = r"""
import socket, sys, threading
def serve(ip):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((ip, 8080)); s.listen(1024)
    while True:
        c, _ = s.accept(); c.sendall(b"x"); c.close()
for ip in sys.argv[1:]:
    threading.Thread(target=serve, args=(ip,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
BACKENDS = ("10.99.0.1", "10.99.0.2")
IPERF_VIP = "10.96.251.1"
CLUSTER_CIDR = "10.200.0.0/16"


def vip(i: int) -> str:
    return f"10.96.{i // 250}.{i % 250 + 1}"


def records(n: int) -> tuple[list[ServiceState], list[EndpointSliceState]]:
    """n services; the last one has the real backends, the others 2 backends elsewhere each."""
    services, slices = [], []
    for i in range(n):
        services.append(ServiceState("bench", f"s{i}", "ClusterIP", (vip(i),),
                                     (ServicePortState("http", "TCP", 80, "8080"),)))
        ips = BACKENDS if i == n - 1 else (f"10.98.{i // 250}.{i % 250 + 1}", f"10.97.{i // 250}.{i % 250 + 1}")
        slices.append(EndpointSliceState("bench", f"s{i}-a", f"s{i}", "IPv4", (EndpointPortState("http", "TCP", 8080),),
                                         tuple(SliceEndpointState((ip,)) for ip in ips)))
    return services, slices


def kube_ports(n: int) -> list[kube_proxy.ServicePort]:
    out = []
    for i in range(n):
        ips = BACKENDS if i == n - 1 else (f"10.98.{i // 250}.{i % 250 + 1}", f"10.97.{i // 250}.{i % 250 + 1}")
        out.append(kube_proxy.ServicePort("bench", f"s{i}", vip(i), 80, tuple((ip, 8080) for ip in ips), port_name="http"))
    return out


def restore(ns: str, ports: list[kube_proxy.ServicePort]) -> float:
    """kube-proxy's layout for `ports` into `ns` with iptables-restore (what a kube-proxy sync
    does: the whole table); the seconds it took."""
    document = kube_proxy.render(ports, CLUSTER_CIDR)
    started = time.perf_counter()
    subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "-w", "5", "--noflush"], input=document, text=True,
                   check=True, capture_output=True, timeout=1800)
    return time.perf_counter() - started


def _summary(samples: list[float]) -> dict[str, Any]:
    return {"n": len(samples), "p50_us": round(median(samples) or 0, 1), "p99_us": round(percentile(samples, 99) or 0, 1)}


class Bench:
    def __init__(self, tag: str) -> None:
        self.ns_m, self.ns_k = f"mbbench-svcm{tag}", f"mbbench-svck{tag}"
        self.cgroup = cgroups.create(f"mbbench-svc{tag}")
        self.client_cg = cgroups.child(self.cgroup, "client")
        self.pin_root = Path(f"/sys/fs/bpf/mbbench-svc{tag}")
        self.port = DatapathPort(self.pin_root)
        self.servers: list[subprocess.Popen[str]] = []

    def setup(self) -> None:
        for ns in (self.ns_m, self.ns_k):
            netns.create(ns)
            for ip in BACKENDS:
                netns.run(["ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "lo"])
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, *BACKENDS],
                                    stdout=subprocess.PIPE, text=True)
            self.servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        # kube-proxy's client: locally generated packets to the service range need a route
        # before OUTPUT's DNAT picks the backend.
        netns.run(["ip", "-n", self.ns_k, "route", "add", "10.96.0.0/12", "dev", "lo"])
        self.port.load()
        attach_sock_hooks(self.cgroup, {p: self.port.dp.program_fd(p) for p in SOCK_HOOKS})
        self.maps = MapManager(LbMapPort(self.port), LB_ROLES, order=LB_ORDER)
        self.ids = LbIds()

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        self.port.close()
        self.port.dp.unpin()
        cgroups.remove(self.cgroup)
        for ns in (self.ns_m, self.ns_k):
            netns.delete(ns)

    def load(self, n: int) -> float:
        """Both sides hold n services; returns the seconds iptables-restore took (kube-proxy's sync)."""
        services, slices = records(n)
        for role, contents in desired_contents(service_table(services, slices, "node").values(), "node",
                                               self.ids).items():
            self.maps.replace(role, contents)
        self.maps.apply()
        return restore(self.ns_k, kube_ports(n))

    def probe(self, membrane: bool, target: str, count: int) -> list[float]:
        cmd = [sys.executable, "-c", PROBE, target, "80" if target.startswith("10.96.") else "8080", str(count)]
        if membrane:
            done = cgroups.run_in(self.client_cg, self.ns_m, cmd, timeout=300)
        else:
            done = subprocess.run(["ip", "netns", "exec", self.ns_k, *cmd], capture_output=True, text=True,
                                  timeout=300)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    def add_iperf_service(self) -> None:
        """IPERF_VIP:5201 -> BACKENDS[0]:5201 only (where the iperf3 server listens), next to the others."""
        svc = ServiceState("bench", "iperf", "ClusterIP", (IPERF_VIP,), (ServicePortState("", "TCP", 5201, "5201"),))
        sl = EndpointSliceState("bench", "iperf-a", "iperf", "IPv4", (EndpointPortState("", "TCP", 5201),),
                                (SliceEndpointState((BACKENDS[0],)),))
        for role, contents in desired_contents(service_table([svc], [sl], "node").values(), "node", self.ids).items():
            for key, value in contents.items():
                self.maps.set(role, key, value)
        self.maps.apply()

    def iperf(self, target: str, seconds: int) -> float:
        server = subprocess.Popen(["ip", "netns", "exec", self.ns_m, "iperf3", "-s", "-1", "-B", BACKENDS[0], "-p",
                                   "5201"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        try:
            done = cgroups.run_in(self.client_cg, self.ns_m, ["iperf3", "-c", target, "-p", "5201", "-t",
                                                              str(seconds), "-J"], timeout=seconds + 30)
            return float(json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
        finally:
            server.kill()
            server.wait()


def apply_to_enforced(n: int, changes: int = 20) -> dict[str, Any]:
    """One Service change at n services: membrane's manager to the maps, kube-proxy's restore."""
    tag = f"a{os.getpid()}"
    pin_root = Path(f"/sys/fs/bpf/mbbench-svc{tag}")
    port = DatapathPort(pin_root)
    port.load()
    try:
        manager = LbManager(port, "node")
        services, slices = records(n)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for svc in services:
            manager.on_update(Kind.SERVICE, svc.key, svc)
        for sl in slices:
            manager.on_update(Kind.ENDPOINTSLICE, sl.key, sl)
        started = time.perf_counter()
        manager.apply()
        first_apply = time.perf_counter() - started
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        heap = sum(s.size_diff for s in after.compare_to(before, "filename"))
        timings = []
        for c in range(changes):
            sl = slices[c]
            changed = EndpointSliceState(sl.namespace, sl.name, sl.service, "IPv4", sl.ports,
                                         (*sl.endpoints, SliceEndpointState((f"10.95.0.{c + 1}",))) if c % 2 == 0
                                         else sl.endpoints[:1])
            started = time.perf_counter()
            manager.on_update(Kind.ENDPOINTSLICE, changed.key, changed)
            manager.apply()
            timings.append((time.perf_counter() - started) * 1e3)
        return {"services": n, "membrane_change_ms": {"p50": round(median(timings) or 0, 2),
                                                      "p99": round(percentile(timings, 99) or 0, 2)},
                "membrane_first_apply_s": round(first_apply, 2),
                "manager_heap_kib_per_1000_services": round(heap / 1024 / (n / 1000), 1)}
    finally:
        port.close()
        port.dp.unpin()


def run(counts: tuple[int, ...] = (1, 1000, 10000), samples: int = 2000, seconds: int = 3) -> dict[str, Any]:
    bench = Bench(str(os.getpid()))
    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                               "kernel": platform.release(), "cores": os.cpu_count(),
                               "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
                               "samples": samples, "latency": []}
    try:
        bench.setup()
        results["kube_proxy_restore_s"] = {}
        for n in counts:
            results["kube_proxy_restore_s"][str(n)] = round(bench.load(n), 2)
            target = vip(n - 1)
            m, k = [], []
            for _ in range(4):  # interleaved quarters: the machine's noise hits both alike
                m += bench.probe(True, target, samples // 4)
                k += bench.probe(False, target, samples // 4)
            results["latency"].append({"services": n, "membrane": _summary(m), "kube_proxy_iptables": _summary(k)})
            print(f"[services bench] {n} services: membrane {_summary(m)}, iptables {_summary(k)}", file=sys.stderr)
        bench.add_iperf_service()
        via, direct = [], []
        for _ in range(3):
            via.append(bench.iperf(IPERF_VIP, seconds))
            direct.append(bench.iperf(BACKENDS[0], seconds))
        results["throughput_gbps"] = {"via_service": round(median(via) or 0, 2), "pod_ip": round(median(direct) or 0, 2),
                                      "ratio": round((median(via) or 0) / (median(direct) or 1), 3)}
    finally:
        bench.close()
    results["apply"] = apply_to_enforced(counts[-1])
    return results


def markdown(r: dict[str, Any]) -> str:
    lines = ["# Services: socket-level ClusterIP vs kube-proxy's iptables layout", "",
             f"{r['date']}, kernel {r['kernel']}, {r['cores']} cores, load at start {' '.join(r['loadavg_at_start'])}. "
             "Same run, interleaved; medians. Produced by `tests/bench/services_bench.py` (`make bench`, part "
             "`services`).", "",
             "## Connect to first byte through a ClusterIP (the last-declared service)", "",
             "| services | membrane p50 | membrane p99 | iptables p50 | iptables p99 | p50 ratio (iptables / membrane) |",
             "|---|---|---|---|---|---|"]
    for row in r["latency"]:
        m, k = row["membrane"], row["kube_proxy_iptables"]
        lines.append(f"| {row['services']:,} | {m['p50_us']} µs | {m['p99_us']} µs | {k['p50_us']} µs | {k['p99_us']} µs "
                     f"| {k['p50_us'] / m['p50_us']:.2f} |")
    t = r.get("throughput_gbps", {})
    a = r["apply"]
    lines += ["", f"Each sample is one TCP connect and the server's first byte, timed in a Python client "
                  f"({r['samples']} per cell); both sides pay the same interpreter overhead, so the ratio understates "
                  "the difference of the translation itself.", "",
              "## Throughput (iperf3, one stream, same namespace)", "",
              f"Through the ClusterIP: {t.get('via_service')} Gbit/s; to the backend's address: {t.get('pod_ip')} Gbit/s; "
              f"ratio {t.get('ratio')} (after connect() the socket talks to the backend: nothing per packet).", "",
              f"## One change at {a['services']:,} services", "",
              f"- membrane, `LbManager.on_update` + `apply` (only the changed service recomputed, differences written to the "
              f"pinned maps): p50 {a['membrane_change_ms']['p50']} ms, p99 {a['membrane_change_ms']['p99']} ms;",
              f"- kube-proxy's iptables mode rewrites its whole table on a sync: `iptables-restore` (nf_tables "
              f"backend) of the {a['services']:,}-service layout took {r['kube_proxy_restore_s'][str(a['services'])]} s "
              f"(1,000 services: {r['kube_proxy_restore_s'].get('1000')} s; the restore alone, kube-proxy's own "
              "computation not included);",
              f"- first apply of all {a['services']:,} services: {a['membrane_first_apply_s']} s (measured under "
              "tracemalloc, which slows Python several times; a restarted agent writes nothing, see the tests).", "",
              "## Memory", "",
              f"The load balancer's Python heap (records, frontends, desired and written map contents; tracemalloc): "
              f"{a['manager_heap_kib_per_1000_services']} KiB per 1,000 services (2 backends each).", ""]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "services.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / "services.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    print(write(run(samples=args.samples), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
