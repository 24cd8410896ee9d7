"""Overlay trust benchmark: what the trust checks cost `from_overlay` per packet.

Three builds compiled side by side on one pin root, so they read the very same maps
(endpoints, ipcache, policy; conntrack too where its layout version is the same): bpf/ just
before the trust rules (BEFORE, read from git), bpf/ as the trust rules landed (TRUST), and
this tree (later datapath changes included). They run on the same crafted packets with
BPF_PROG_TEST_RUN's `repeat` (the kernel's average ns per run), interleaved for several rounds;
medians reported. BEFORE -> TRUST is the cost of the rules alone. All are test builds (VNI from
skb->mark, the outer source from skb->cb[0]: BPF_PROG_TEST_RUN cannot attach tunnel metadata).
Cases:

- established TCP (conntrack hit): the common packet; the checks add one ipcache LPM lookup
  (the inner source's entry must name the outer source as its node);
- established UDP, same;
- new TCP connection per packet is not measurable with `repeat` (the first run opens the
  connection), so policy-judged first packets are not a case here;
- a stranger's VXLAN (current build only): the cost of refusing it.

Run as root from the repo root: `python -m tests.bench.overlay_trust_bench` (also
`python -m tests.bench.run --only overlay`). Writes `bench-results/overlay-trust.{json,md}`.
Creates only a pin root under /sys/fs/bpf/membrane-bench-<pid>-..., removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import uuid
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from membrane.agent.datapath import Datapath, EndpointEntry
from membrane.agent.datapath.encoding import ip_to_field
from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.agent.datapath.layout import IpcacheFlag
from membrane.agent.datapath.prog_test_run import TC_ACT_REDIRECT, TC_ACT_SHOT, prog_test_run
from membrane.identities import ReservedIdentity
from membrane.policy import FlatKey, FlatValue, Verdict

from .stats import median, ratio

BEFORE = "0bfc780~1"  # main just before the trust rules landed
TRUST = "f68e0c9"  # the trust rules as landed (one lookup on the accepted path)
REPO = Path(__file__).resolve().parents[2]
POD = IPv4Address("10.231.1.10")
REMOTE_POD = IPv4Address("10.231.2.20")
NODE = IPv4Address("192.168.231.2")
STRANGER = IPv4Address("192.168.231.99")
ID_LOCAL, ID_REMOTE = 5000, 5001
EP = EndpointEntry(ifindex=231, endpoint_id=51, identity=ID_LOCAL, pod_mac="02:aa:00:00:e7:0a",
                   host_mac="02:ee:00:00:e7:0a")


class _Baseline(Datapath):
    """The old program on the current pins. Its node config struct has padding where
    tunnel_port is now (same size), which the current Python mirror would call a mismatch."""

    def _check_layouts(self, bpf: Any) -> None:
        return None


def baseline_sources(ref: str, into: Path) -> str:
    """bpf/ as it was at `ref`, written under `into`; returns the resolved commit."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", ref], capture_output=True, text=True,
                            check=True).stdout.strip()
    names = subprocess.run(["git", "-C", str(REPO), "ls-tree", "-r", "--name-only", commit, "bpf"],
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{name}"],
                                          capture_output=True, check=True).stdout)
    return commit


def frame(payload: Any) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / payload)


def run(rounds: int = 15, repeat: int = 200_000, before: str = BEFORE, trust: str = TRUST) -> dict[str, Any]:
    root = Path("/sys/fs/bpf") / f"membrane-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    src_dir = Path(tempfile.mkdtemp(prefix="mb-bench-bpf-"))
    new = Datapath(root, test_hooks=True)
    olds: list[Datapath] = []
    try:
        new.load()
        commits, prog = {}, {}
        for build, ref in (("before", before), ("trust", trust)):
            commits[build] = baseline_sources(ref, src_dir / build)
            old = _Baseline(root, src_dir / build / "bpf", test_hooks=True)
            old.load()
            olds.append(old)
            prog[build] = old.program_fd("from_overlay")
        prog["current"] = new.program_fd("from_overlay")
        new.update_map("endpoints", {POD: EP})
        new.update_map("ipcache", {IPv4Network(f"{POD}/32"): IpcacheEntry(ID_LOCAL)})
        new.update_map("ipcache", {IPv4Network("10.231.2.0/24"): IpcacheEntry(int(ReservedIdentity.WORLD), NODE)})
        new.update_map("ipcache", {IPv4Network(f"{REMOTE_POD}/32"): IpcacheEntry(ID_REMOTE, NODE)})
        new.update_map("ipcache", {IPv4Network(f"{NODE}/32"): IpcacheEntry(int(ReservedIdentity.REMOTE_NODE), flags=int(IpcacheFlag.NODE))})
        for i in range(2000):  # a populated ipcache: other pods and nodes' CIDRs around ours
            new.update_map("ipcache", {IPv4Network(f"10.{232 + i // 250}.{i % 250}.0/24"): IpcacheEntry(int(ReservedIdentity.WORLD), IPv4Address(f"192.168.{232 + i // 250}.{i % 250}"))})
        new.update_map("policy", {FlatKey(EP.endpoint_id, 0, 0, 0, 0, 0): FlatValue(int(Verdict.ALLOW), 1)})
        peer = ip_to_field(NODE)
        syn = frame(IP(src=str(REMOTE_POD), dst=str(POD)) / TCP(sport=40000, dport=80, flags="S"))
        ack = frame(IP(src=str(REMOTE_POD), dst=str(POD)) / TCP(sport=40000, dport=80, flags="A") / (b"x" * 100))
        udp = frame(IP(src=str(REMOTE_POD), dst=str(POD)) / UDP(sport=40001, dport=53) / (b"x" * 100))
        for fd in prog.values():  # open the connections (conntrack entries both builds share)
            assert prog_test_run(fd, syn, ingress_ifindex=77, mark=ID_REMOTE, cb0=peer).retval == TC_ACT_REDIRECT
            assert prog_test_run(fd, udp, ingress_ifindex=77, mark=ID_REMOTE, cb0=peer).retval == TC_ACT_REDIRECT
        cases = {"established TCP": ack, "established UDP": udp}
        samples: dict[str, dict[str, list[float]]] = {c: {b: [] for b in prog} for c in cases}
        stranger: list[float] = []
        for r in range(rounds):
            order = tuple(prog) if r % 2 == 0 else tuple(reversed(prog))
            for case, data in cases.items():
                for build in order:
                    res = prog_test_run(prog[build], data, ingress_ifindex=77, mark=ID_REMOTE, cb0=peer,
                                        repeat=repeat)
                    assert res.retval == TC_ACT_REDIRECT, (case, build, res.retval)
                    samples[case][build].append(res.duration_ns)
            res = prog_test_run(prog["current"], ack, ingress_ifindex=77, mark=ID_REMOTE, cb0=ip_to_field(STRANGER),
                                repeat=repeat)
            assert res.retval == TC_ACT_SHOT
            stranger.append(res.duration_ns)
        summary: dict[str, Any] = {}
        for case, by in samples.items():
            b, t, c = median(by["before"]), median(by["trust"]), median(by["current"])
            summary[case] = {"before_ns": b, "trust_ns": t, "current_ns": c,
                             "added_ns": (t - b) if b is not None and t is not None else None,
                             "ratio": ratio(t, b), "samples": by}
        summary["stranger refused"] = {"current_ns": median(stranger), "samples": {"current": stranger}}
        return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "kernel": platform.release(),
                "cores": os.cpu_count(), "loadavg": Path("/proc/loadavg").read_text().split()[:3],
                "commits": commits, "rounds": rounds, "repeat": repeat, "cases": summary}
    finally:
        for old in olds:
            old.close()
        new.close()
        for child in root.iterdir() if root.exists() else ():
            child.unlink()
        if root.exists():
            root.rmdir()
        shutil.rmtree(src_dir, ignore_errors=True)


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Overlay trust: per-packet cost of from_overlay", "",
             f"{results['date']}, kernel {results['kernel']}, {results['cores']} cores, load {results['loadavg']}; "
             f"BPF_PROG_TEST_RUN, {results['repeat']:,} runs per sample, {results['rounds']} interleaved rounds, "
             f"medians. Before = bpf/ at {results['commits']['before'][:10]} (no trust checks), trust = bpf/ at "
             f"{results['commits']['trust'][:10]} (the rules as landed), current = this tree (later datapath "
             "changes too); all on the same pinned maps (2,000 extra ipcache prefixes).", "",
             "| case | before ns/pkt | trust ns/pkt | added by the rules | ratio | current tree ns/pkt |",
             "|---|---|---|---|---|---|"]
    for case, row in results["cases"].items():
        fmt = lambda v, spec=".0f": "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"| {case} | {fmt(row.get('before_ns'))} | {fmt(row.get('trust_ns'))} | "
                     f"{fmt(row.get('added_ns'), '+.0f')} | {fmt(row.get('ratio'), '.2f')} | "
                     f"{fmt(row.get('current_ns'))} |")
    lines += ["", "On the accepted path the rules cost one ipcache (LPM trie) lookup per packet from the "
              "tunnel, conntrack hits included: trust is judged before conntrack, so a forged reply of an open "
              "connection is refused too. The peer's own entry is read only for a node's own traffic and to "
              "name the reason of a drop; a stranger's packet costs both lookups and a drop event.", ""]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlay-trust.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(results)
    (out / "overlay-trust.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--before", default=BEFORE, help="git ref of bpf/ without the trust rules")
    ap.add_argument("--trust", default=TRUST, help="git ref of bpf/ with the trust rules as landed")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the benchmark needs root (BPF)", file=sys.stderr)
        return 2
    print(write(run(args.rounds, args.repeat, args.before, args.trust), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
