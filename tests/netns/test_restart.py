"""kill -9 the agent under a running TCP stream: traffic keeps flowing, state comes back."""

from __future__ import annotations

import signal
import time

from membrane_testkit.lab import netns
from membrane_testkit.lab.traffic import Stream


def filters(node, ifname: str) -> int:  # type: ignore[no-untyped-def]
    out = ""
    for hook in ("ingress", "egress"):
        out += netns.exec_in(node.netns, ["tc", "filter", "show", "dev", ifname, hook]).stdout
    return out.count("direct-action")


def test_kill_9_under_traffic(node) -> None:  # type: ignore[no-untyped-def]
    a, b = node.add_pod("a"), node.add_pod("b")
    before_ips = {e["ip"] for e in node.api("endpoint.list")}
    stream = Stream(b.netns, b.ip, a.netns, seconds=6)
    try:
        time.sleep(1.5)  # paces the test: the stream is flowing through the agent before the kill
        node.stop_agent(signal.SIGKILL)
        time.sleep(1.0)  # traffic with no agent at all
        node.start_agent()
        result = stream.result()
    finally:
        stream.close()
    assert result.bytes > 1_000_000 and result.max_gap < 0.5, result
    # The restarted agent reopened the pinned maps: the stream's conntrack entry predates it.
    stream_ct = [e for e in node.api("bpf.ct") if e["proto"] == "tcp" and e["dst"] == f"{b.ip}:7000"]
    assert stream_ct and stream_ct[0]["age_s"] > 5.0, stream_ct
    eps = node.api("endpoint.list")
    assert {e["ip"] for e in eps} == before_ips and all(e["state"] == "ready" for e in eps)
    for ep in eps:
        assert filters(node, ep["host_ifname"]) == 2, "programs attached twice or missing"
    c = node.add_pod("c")
    assert c.ip not in before_ips
    a.exec(["ping", "-c", "1", "-W", "2", c.ip])
