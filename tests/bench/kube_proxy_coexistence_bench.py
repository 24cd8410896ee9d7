"""kube-proxy coexistence benchmark: what keeping translated flows on the stack costs `from_container`.

Two builds compiled side by side on one pin root, so they read the very same maps (endpoints,
ipcache, policy, conntrack): bpf/ just before the fix (BEFORE, read from git) and this tree.
They run on the same crafted packets with BPF_PROG_TEST_RUN's `repeat` (the kernel's average ns
per run), interleaved for several rounds; medians reported. Cases, all at `from_container`:

- pod to pod, established TCP and its reply (conntrack hits): the redirect fast path, which
  must stay a redirect and should cost the same (the fix adds one flag test on the entry the
  lookup returned);
- the reply of a translated flow (a ClusterIP connection kube-proxy DNATed to this backend;
  its conntrack entry made by the current `to_container`, so marked VIA_STACK): BEFORE
  redirects it into the client (the bug), the current build hands it to the stack.

New flows are not measurable with `repeat` (the first run opens the connection).

Run as root from the repo root: `python -m tests.bench.kube_proxy_coexistence_bench` (also
`python -m tests.bench.run --only kube_proxy`). Writes `bench-results/kube-proxy-coexistence.{json,md}`.
Creates only a pin root under /sys/fs/bpf/membrane-bench-<pid>-..., removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from membrane.agent.datapath import Datapath, EndpointEntry, loading
from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.agent.datapath.prog_test_run import TC_ACT_OK, TC_ACT_REDIRECT, prog_test_run
from membrane.policy import FlatKey, FlatValue, Verdict

from .overlay_trust_bench import baseline_sources
from .stats import median, ratio

BEFORE = "7077757~1"  # main just before the fix landed
CLIENT_IP, BACKEND_IP = IPv4Address("10.233.1.10"), IPv4Address("10.233.1.20")
ID_CLIENT, ID_BACKEND = 5100, 5101
# The backend's veth is `lo` (ifindex 1): to_container compares the endpoint's ifindex with
# skb->ifindex, which BPF_PROG_TEST_RUN requires to be a device of this namespace.
# `repeat` runs the program again and again on the same skb, so what a redirect writes must still
# pass the next run: each pod's host-side MAC is the other pod's own MAC (the rewritten source
# then passes the anti-spoofing check), and the TTL starts at 255 with at most 250 runs a sample.
CLIENT_MAC, BACKEND_MAC = "02:aa:00:00:e9:0a", "02:aa:00:00:e9:14"
CLIENT = EndpointEntry(ifindex=233, endpoint_id=61, identity=ID_CLIENT, pod_mac=CLIENT_MAC, host_mac=BACKEND_MAC)
BACKEND = EndpointEntry(ifindex=1, endpoint_id=62, identity=ID_BACKEND, pod_mac=BACKEND_MAC, host_mac=CLIENT_MAC)


class _Baseline(Datapath):
    """bpf/ of an older commit on the current pins: its own program list, no layout or constant
    checks against today's Python (it predates constants added since)."""

    def _check_layouts(self, bpf: Any) -> None:
        return None

    def load(self) -> None:
        with _older_loader():
            super().load()


@contextlib.contextmanager
def _older_loader() -> Iterator[None]:
    saved = (loading.FAMILIES, loading.drift, loading.static_asserts)
    loading.FAMILIES = {loading.POD_FAMILY: loading.Family(  # type: ignore[misc]
        ("bpf_lxc.c", "bpf_overlay.c"), tc_programs=("from_container", "to_container", "from_overlay"))}
    loading.drift = lambda headers, want=None: []  # type: ignore[assignment]
    loading.static_asserts = lambda: ""  # type: ignore[assignment]
    try:
        yield
    finally:
        loading.FAMILIES, loading.drift, loading.static_asserts = saved  # type: ignore[misc]


def frame(src: EndpointEntry, dst: EndpointEntry, payload: Any) -> bytes:
    return bytes(Ether(src=src.pod_mac, dst=dst.host_mac) / payload)


def run(rounds: int = 300, repeat: int = 250, before: str = BEFORE) -> dict[str, Any]:
    root = Path("/sys/fs/bpf") / f"membrane-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    src_dir = Path(tempfile.mkdtemp(prefix="mb-bench-bpf-"))
    new = Datapath(root)
    old: Datapath | None = None
    try:
        new.load()
        commit = baseline_sources(before, src_dir)
        old = _Baseline(root, src_dir / "bpf", families=())
        old.load()
        prog = {"before": old.program_fd("from_container"), "current": new.program_fd("from_container")}
        to_container = new.program_fd("to_container")
        new.update_map("endpoints", {CLIENT_IP: CLIENT, BACKEND_IP: BACKEND})
        new.update_map("ipcache", {IPv4Network(f"{CLIENT_IP}/32"): IpcacheEntry(ID_CLIENT),
                                   IPv4Network(f"{BACKEND_IP}/32"): IpcacheEntry(ID_BACKEND)})
        for ep in (CLIENT, BACKEND):
            new.update_map("policy", {FlatKey(ep.endpoint_id, 0, 0, 0, 0, 0): FlatValue(int(Verdict.ALLOW), 1),
                                      FlatKey(ep.endpoint_id, 0, 1, 0, 0, 0): FlatValue(int(Verdict.ALLOW), 1)})

        def tcp(src_ip: IPv4Address, dst_ip: IPv4Address, sport: int, dport: int, flags: str,
                ep: EndpointEntry) -> bytes:
            return frame(ep, ep, IP(src=str(src_ip), dst=str(dst_ip), ttl=255) /
                         TCP(sport=sport, dport=dport, flags=flags) / (b"x" * 100 if "A" in flags else b""))

        # Pod to pod, opened by each build's from_container (one connection each: distinct ports).
        direct: dict[str, tuple[bytes, bytes]] = {}
        for i, (build, fd) in enumerate(prog.items()):
            sport = 41000 + i
            syn = tcp(CLIENT_IP, BACKEND_IP, sport, 8080, "S", CLIENT)
            assert prog_test_run(fd, syn, ingress_ifindex=CLIENT.ifindex).retval == TC_ACT_REDIRECT
            direct[build] = (tcp(CLIENT_IP, BACKEND_IP, sport, 8080, "A", CLIENT),
                             tcp(BACKEND_IP, CLIENT_IP, 8080, sport, "A", BACKEND))
        # A translated flow: its first packet came out of the stack to the backend's veth.
        syn = tcp(CLIENT_IP, BACKEND_IP, 42000, 8080, "S", CLIENT)
        assert prog_test_run(to_container, syn, ifindex=BACKEND.ifindex).retval == TC_ACT_OK
        translated_reply = tcp(BACKEND_IP, CLIENT_IP, 8080, 42000, "A", BACKEND)
        cases: dict[str, dict[str, tuple[bytes, int, int]]] = {
            "pod to pod, established TCP (redirect)": {
                b: (direct[b][0], CLIENT.ifindex, TC_ACT_REDIRECT) for b in prog},
            "pod to pod, TCP reply (redirect)": {
                b: (direct[b][1], BACKEND.ifindex, TC_ACT_REDIRECT) for b in prog},
            "translated flow's reply (ClusterIP backend -> client)": {
                "before": (translated_reply, BACKEND.ifindex, TC_ACT_REDIRECT),  # the bug: around netfilter
                "current": (translated_reply, BACKEND.ifindex, TC_ACT_OK)},
        }
        samples: dict[str, dict[str, list[float]]] = {c: {b: [] for b in prog} for c in cases}
        for r in range(rounds):
            order = tuple(prog) if r % 2 == 0 else tuple(reversed(prog))
            for case, by_build in cases.items():
                for build in order:
                    data, ifindex, want = by_build[build]
                    res = prog_test_run(prog[build], data, ingress_ifindex=ifindex, repeat=repeat)
                    assert res.retval == want, (case, build, res.retval)
                    samples[case][build].append(res.duration_ns)
        summary: dict[str, Any] = {}
        for case, by in samples.items():
            b, c = median(by["before"]), median(by["current"])
            summary[case] = {"before_ns": b, "current_ns": c, "ratio": ratio(c, b),
                             "before_verdict": _verdict(cases[case]["before"][2]),
                             "current_verdict": _verdict(cases[case]["current"][2]), "samples": by}
        return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "kernel": platform.release(),
                "cores": os.cpu_count(), "loadavg": Path("/proc/loadavg").read_text().split()[:3],
                "commit_before": commit, "rounds": rounds, "repeat": repeat, "cases": summary}
    finally:
        if old is not None:
            old.close()
        new.close()
        for child in root.iterdir() if root.exists() else ():
            child.unlink()
        if root.exists():
            root.rmdir()
        shutil.rmtree(src_dir, ignore_errors=True)


def _verdict(code: int) -> str:
    return {TC_ACT_OK: "to the stack", TC_ACT_REDIRECT: "redirect"}.get(code, str(code))


def markdown(results: dict[str, Any]) -> str:
    lines = ["# kube-proxy coexistence: per-packet cost of from_container", "",
             f"{results['date']}, kernel {results['kernel']}, {results['cores']} cores, load {results['loadavg']}; "
             f"BPF_PROG_TEST_RUN, {results['repeat']:,} runs per sample, {results['rounds']} interleaved rounds, "
             f"medians. Before = bpf/ at {results['commit_before'][:10]} (every reply to a local pod redirected), "
             "current = this tree; both on the same pinned maps and conntrack.", "",
             "| case | before ns/pkt | current ns/pkt | ratio | before | current |", "|---|---|---|---|---|---|"]
    for case, row in results["cases"].items():
        fmt = lambda v, spec=".0f": "-" if v is None else format(v, spec)  # noqa: E731
        lines.append(f"| {case} | {fmt(row['before_ns'])} | {fmt(row['current_ns'])} | {fmt(row['ratio'], '.2f')} "
                     f"| {row['before_verdict']} | {row['current_verdict']} |")
    lines += ["", "Pod-to-pod packets keep the redirect; the fix adds one test of a flag on the conntrack entry "
              "the lookup already returned. The translated flow's reply now goes to the stack (netfilter "
              "reverses kube-proxy's DNAT there), where before it was redirected into the client from the "
              "backend's own address and reset.", ""]
    return "\n".join(lines)


def write(results: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "kube-proxy-coexistence.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (out / "kube-proxy-coexistence.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=250, help="at most 250 (the TTL decrements each run)")
    ap.add_argument("--out", type=Path, default=Path("bench-results"))
    args = ap.parse_args()
    print(write(run(args.rounds, args.repeat), args.out))


if __name__ == "__main__":
    main()
