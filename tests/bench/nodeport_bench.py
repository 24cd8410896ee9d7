"""NodePort per-packet cost: membrane's tc path (bpf_host.c) vs kube-proxy's iptables NodePort layout.

One lab node (a real agent with `--devices ul0`), one backend pod (UDP echo), an outside
namespace on the node's underlay bridge. The same backend is behind two NodePorts of the node:
one in membrane's maps (fed through an LB manager, as tests/netns/test_nodeport.py does), one in
an iptables layout as kube-proxy writes it (`membrane_testkit.lab.kube_proxy`: KUBE-SERVICES ->
KUBE-NODEPORTS -> KUBE-EXT/KUBE-SVC -> KUBE-SEP DNAT, plus masquerading). `extra` more services
are in both (membrane: their frontends and Maglev tables; iptables: their chains, before ours).
The outside client sends one UDP request per new socket (a new flow: the translation decision
runs, not just conntrack), alternating the two ports, and times each answer. Medians, p99 and
the ratio come from the same run.

Run as root from the repo root: `python -m tests.bench.run --only nodeport`. Writes
`bench-results/services-nodeport.{json,md}`. Lab objects are `mbt-...` with the pid.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from membrane.agent.datapath_port import DatapathPort
from membrane.agent.lb_syncing import LB_KINDS, LbManager
from membrane.agent.state_consuming import StateConsumer
from membrane.api.state_objects import (
    Change,
    EndpointPortState,
    EndpointSliceState,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
    StateUpdate,
)
from membrane_testkit.lab import kube_proxy, netns
from membrane_testkit.lab.node import LabNode
from membrane_testkit.lab.underlay import Underlay

from .stats import median, percentile, ratio

NODE_IP, OUTSIDE = "192.0.2.41", "192.0.2.60"
MEMBRANE_PORT, IPTABLES_PORT = 30080, 31080
PROBE = str(Path(__file__).resolve().parents[2] / "membrane_testkit" / "lab" / "service_probe.py")
_CLIENT = r"""
import json, socket, sys, time
ip, ports, rounds = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], int(sys.argv[3])
out = {str(p): [] for p in ports}
for _ in range(rounds):
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        t = time.perf_counter()
        s.sendto(b"x", (ip, port))
        try:
            s.recv(64)
            out[str(port)].append((time.perf_counter() - t) * 1e6)
        except OSError:
            out[str(port)].append(None)
        s.close()
print(json.dumps(out))
"""
_counter = itertools.count()


def _measure(extra: int, rounds: int) -> dict[str, Any]:
    tag = f"{os.getpid() % 10000}b{next(_counter)}"
    underlay = Underlay(f"mbt-ul{tag}").create()
    outside = f"mbt-out{tag}"
    node = LabNode(f"n{tag}", pod_cidr="10.200.1.0/24",
                   extra_args=["--devices", "ul0", "--node-ip", NODE_IP, "--resync-seconds", "3600"])
    server: subprocess.Popen[str] | None = None
    port: DatapathPort | None = None
    try:
        node.create()
        underlay.attach(node.netns, NODE_IP)
        netns.create(outside)
        underlay.attach(outside, OUTSIDE)
        node.start_agent()
        node.api("apply", objects=[{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
                                   {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web1", "namespace": "shop"},
                                    "spec": {"containers": [{"name": "c", "image": "i"}]}}])
        web = node.add_pod("web1", "shop")
        server = subprocess.Popen(["ip", "netns", "exec", web.netns, sys.executable, "-S", "-u", PROBE, "serve",
                                   "web1", web.ip, "", "5353"], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        # membrane: the Service (and `extra` others) through an LB manager on the node's maps.
        port = DatapathPort(node.pin_root)
        port.load()
        consumer = StateConsumer(node.name)
        consumer.stream_id = "bench"
        lb = LbManager(port, node.name, lambda: (NODE_IP,))
        for kind in LB_KINDS:
            consumer.register(kind, lb)
        changes = []
        for i in range(extra + 1):
            name = "web" if i == 0 else f"other{i}"
            node_port = MEMBRANE_PORT if i == 0 else 32000 + i
            svc = ServiceState("shop", name, "NodePort", (f"10.96.{i // 250}.{i % 250 + 1}",),
                               (ServicePortState("dns", "UDP", 53, "5353", node_port=node_port),))
            sl = EndpointSliceState("shop", f"{name}-a", name, "IPv4", (EndpointPortState("dns", "UDP", 5353),),
                                    (SliceEndpointState((web.ip,), node_name=node.name),))
            changes += [Change((svc.kind, svc.key), svc), Change((sl.kind, sl.key), sl)]
        consumer.apply_update(StateUpdate(1, "bench", False, changes))
        # kube-proxy: the same backend at another NodePort, after `extra` other services' chains.
        ports = [kube_proxy.ServicePort("shop", f"kp{i}", f"10.97.{i // 250}.{i % 250 + 1}", 53,
                                        ((web.ip, 5353),), "udp", "dns", 33000 + i) for i in range(1, extra + 1)]
        ports.append(kube_proxy.ServicePort("shop", "kpweb", "10.97.255.1", 53, ((web.ip, 5353),), "udp", "dns",
                                            IPTABLES_PORT))
        kube_proxy.install(node.netns, ports, "10.200.0.0/16")
        done = netns.run(["ip", "netns", "exec", outside, sys.executable, "-c", _CLIENT, NODE_IP,
                          f"{MEMBRANE_PORT},{IPTABLES_PORT}", str(rounds)], timeout=600)
        samples = json.loads(done.stdout)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        if port is not None:
            port.close()
        node.destroy()
        netns.delete(outside)
        underlay.destroy()
    out: dict[str, Any] = {"extra_services": extra, "rounds": rounds}
    for label, key in (("membrane_tc", str(MEMBRANE_PORT)), ("kube_proxy_iptables", str(IPTABLES_PORT))):
        ok = [v for v in samples[key] if v is not None]
        out[label] = {"p50_us": median(ok), "p99_us": percentile(ok, 99), "lost": len(samples[key]) - len(ok)}
    out["ratio_p50"] = ratio(out["membrane_tc"]["p50_us"], out["kube_proxy_iptables"]["p50_us"])
    return out


def run(rounds: int = 2000) -> dict[str, Any]:
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "cases": [_measure(extra, rounds) for extra in (0, 100)]}


def write(results: dict[str, Any], out_dir: Path = Path("bench-results")) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "services-nodeport.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# NodePort per packet: membrane (tc, bpf_host.c) vs kube-proxy's iptables layout", "",
             f"Run {results['date']}, one run, same node, same backend pod, interleaved; one UDP request per "
             "new socket (every datagram a new flow) from a namespace outside the node; round-trip time "
             "outside -> node -> pod -> outside (tests/bench/nodeport_bench.py).", "",
             "| other services | membrane p50 / p99 (us) | iptables p50 / p99 (us) | ratio p50 (membrane/iptables) |",
             "|---|---|---|---|"]
    for case in results["cases"]:
        m, k = case["membrane_tc"], case["kube_proxy_iptables"]
        lines.append(f"| {case['extra_services']} | {m['p50_us']:.0f} / {m['p99_us']:.0f} | "
                     f"{k['p50_us']:.0f} / {k['p99_us']:.0f} | {case['ratio_p50']:.2f} |")
    lines += ["", "The round trip includes both namespaces' stacks and the pod's socket, the same for both "
              "paths; the difference is the translation (tc + Maglev + NAT entries vs netfilter's nat "
              "chains + conntrack). Shared 2-core machine: compare within a row only."]
    text = "\n".join(lines) + "\n"
    (out_dir / "services-nodeport.md").write_text(text)
    return text


if __name__ == "__main__":
    print(write(run()))
