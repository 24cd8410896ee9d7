"""Render the benchmark results (the dict written to foundation.json) as Markdown."""

from __future__ import annotations

from typing import Any

MB, REF, VETH = "membrane", "bridge reference", "direct veth"


def _f(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _last(error: str) -> str:
    """The most telling line of an error (the last line of a traceback)."""
    return error.strip().splitlines()[-1] if error.strip() else error


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or not b else f"{a / b:.2f}x"


def _traffic(results: dict[str, Any]) -> list[str]:
    cfg, t = results["config"], results.get("traffic", {})
    lines = [f"## Same-node pod-to-pod traffic (medians of {cfg['reps']} interleaved runs of {cfg['seconds']} s)", "",
             "| setup | latency p50 (us) | latency avg (us) | latency p99 (us) | p50 vs direct veth | p50 vs bridge "
             "| throughput (Gbit/s) | vs bridge | retransmits |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    veth, ref = t.get(VETH, {}), t.get(REF, {})
    for name, setup in results.get("setups", {}).items():
        if setup["error"]:
            lines.append(f"| {name} | not available: `{_last(setup['error'])[:160]}` |||||||| ")
            continue
        d = t.get(name, {})
        lines.append(f"| {name} | {_f(d.get('latency_p50_us'), 2)} | {_f(d.get('latency_avg_us'), 2)} "
                     f"| {_f(d.get('latency_p99_us'), 2)} | {_ratio(d.get('latency_p50_us'), veth.get('latency_p50_us'))} "
                     f"| {_ratio(d.get('latency_p50_us'), ref.get('latency_p50_us'))} | {_f(d.get('throughput_gbps'), 2)} "
                     f"| {_ratio(d.get('throughput_gbps'), ref.get('throughput_gbps'))} | {_f(d.get('retransmits'), 0)} |")
    errors = [f"- {name}: {e}" for name, d in t.items() for e in d.get("errors", [])]
    if errors:
        lines += ["", "Failed measurements:", *errors]
    mb = results.get("setups", {}).get(MB, {})
    if "node_stack_forwarded_during_traffic" in mb:
        lines += ["", f"Path check: the membrane node's IP stack forwarded {mb['node_stack_forwarded_during_traffic']} "
                  "packets during the membrane traffic tests (0 means every pod-to-pod packet took the eBPF "
                  "redirect_peer path)."]
    floor, ref_p50 = veth.get("latency_p50_us"), ref.get("latency_p50_us")
    if floor and ref_p50:
        needed = 0.6 * ref_p50 / floor
        verdict = ("below 1.00x, the floor no veth-based datapath can beat, so this target cannot be met here"
                   if needed < 1 else "above the floor, so reachable in principle")
        lines += ["", f"Feasibility: the bridge is {ref_p50 / floor:.2f}x the direct veth here, so '<= 0.6x bridge' "
                  f"means <= {needed:.2f}x the direct veth: {verdict}."]
    lines += ["", "Raw per-run values are in `foundation.json`. sockperf ping-pong reports half the round trip "
              "(one TCP connection, 14-byte messages); iperf3 is one TCP stream, receiver goodput."]
    return lines


def _targets(results: dict[str, Any]) -> list[str]:
    lines = ["## Targets", "", "| target | result | met? |", "|---|---:|---|"]
    for row in results["targets"]:
        met = "not measured" if row["met"] is None else ("yes" if row["met"] else "**NO, missed**")
        lines.append(f"| {row['name']} {row['target']} | {_f(row['value'], 2, 'x')} | {met} |")
    return lines


def _cni(results: dict[str, Any]) -> list[str]:
    c = results.get("cni")
    if not c:
        return ["## CNI plugin", "", "Not measured (the bridge reference setup failed)."]
    cfg = results["config"]
    names = [n for n in ("membrane-cni", "bridge") if n in c["startup_ms"]]
    wrapper = c["ip_netns_exec_overhead_ms"]
    both = len(names) == 2
    head = " | ".join(names) + (" | bridge net of wrapper (est.) | membrane / bridge net |" if both else " |")
    lines = ["## CNI plugin (wall time of each plugin exec, as kubelet sees it)", "",
             f"| metric | {head}", "|---|" + "---:|" * (len(names) + (2 if both else 0))]

    def row(label: str, values: list[float | None], wrapped: bool = True) -> None:
        cells = [_f(v) for v in values]
        if both:
            net = values[1] - wrapper if wrapped and values[1] is not None else values[1]
            cells += [_f(net), _ratio(values[0], net)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("start-up, CNI_COMMAND=VERSION, median of 20 (ms)", [c["startup_ms"][n] for n in names], wrapped=False)
    for key, label in (("add_sequential", f"ADD, {cfg['seq_pods']} sequential"),
                       ("add_concurrent", f"ADD, {cfg['conc_pods']} concurrent"),
                       ("del_sequential", "DEL, the sequential pods")):
        data = c.get(key, {})
        row(f"{label}: p50 (ms)", [data.get(n, {}).get("p50_ms") for n in names])
        row(f"{label}: p99 (ms)", [data.get(n, {}).get("p99_ms") for n in names])
        fails = [data.get(n, {}).get("failures") for n in names]
        if any(fails):
            lines.append(f"| {label}: failures | " + " | ".join(str(f) for f in fails) + (" | | |" if both else " |"))
    walls = [c["add_concurrent"].get(n, {}).get("wall_s") for n in names]
    lines.append(f"| {cfg['conc_pods']} concurrent ADDs: wall time of the whole burst (ms) | "
                 + " | ".join(_f(w * 1000 if w is not None else None) for w in walls)
                 + (" | | |" if both else " |"))
    lines += ["", "The bridge plugin runs through `ip netns exec <node>` so that it acts on the node namespace and "
              f"never on the machine; that wrapper alone costs {_f(wrapper)} ms (median of 20 `ip netns exec <node> "
              "/bin/true`) and is inside the bridge ADD/DEL times (kubelet would not pay it), hence the estimated "
              "'net of wrapper' column (median minus median: approximate). The VERSION row runs the bridge binary "
              "directly. p99 is nearest-rank, so with 50 or 20 samples it is the slowest call."]
    for key in ("add_sequential", "add_concurrent", "del_sequential"):
        for name, data in c.get(key, {}).items():
            if data.get("first_error"):
                lines.append(f"\nFirst error, {key} {name}: `{data['first_error'][:300]}`")
    rss = c.get("agent_rss_kib")
    if rss:
        lines += ["", "## membrane-agent (memory is VmRSS of the agent process)", "",
                  f"Agent start-up, exec to ready (compile, load, attach): {_f(c.get('agent_ready_s'), 1)} s.", "",
                  "| state | RSS (MiB) |", "|---|---:|",
                  f"| idle, 0 pods, 2 s after ready | {_f(rss['idle'] / 1024)} |",
                  f"| {rss['loaded_pods']} pods ({cfg['seq_pods']} timed + 2 traffic pods) | {_f(rss['loaded'] / 1024)} |"]
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = ["# Foundation benchmark: same-node pod to pod", "",
             f"- date: {m['date']}; run took {results['duration_s']} s (`python -m tests.bench.run`, or `make bench`)",
             f"- machine: kernel {m['kernel']}, {m['cores']} cores ({m['cpu']}), load average at start "
             f"{' '.join(m['loadavg_at_start'])}; shared with other work, so numbers are noisy: compare "
             "ratios within this run, not across runs",
             f"- tools: {m['sockperf']}, {m['iperf3']}, Python {m['python']}; "
             f"net.bridge.bridge-nf-call-iptables={m['bridge_nf_call_iptables']}",
             "", "Setups:", ""]
    for name, s in results.get("setups", {}).items():
        lines.append(f"- **{name}**: {s['description']}" + (f" (NOT AVAILABLE: {_last(s['error'])[:200]})"
                                                          if s["error"] else ""))
    lines += ["", *_targets(results), "", *_traffic(results), "", *_cni(results), ""]
    if results.get("leftovers"):
        lines += [f"**Left behind:** {results['leftovers']}", ""]
    return "\n".join(lines)
