"""Flow events through the mb_events_v1 ring buffer, and what bounds their number."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from membrane.agent.datapath import EndpointEntry
from membrane.agent.datapath.encoding import field_to_ip, field_to_port
from membrane.agent.datapath.events import EventConfig, EventStats
from membrane.agent.datapath.ipcache import IpcacheEntry
from membrane.agent.datapath.layout import EventType, EventVerdict, FlowEvent, Reason
from membrane.agent.datapath.prog_test_run import TC_ACT_REDIRECT, TC_ACT_SHOT, prog_test_run
from membrane.delta import diff
from membrane.policy import FlatKey, FlatValue, Verdict

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

POD_A = IPv4Address("10.211.0.10")
POD_B = IPv4Address("10.211.0.11")
OUTSIDE = "203.0.113.9"
ID_A, ID_B = 4000, 4001
EP_A = EndpointEntry(ifindex=301, endpoint_id=40, identity=ID_A, pod_mac="02:aa:00:00:02:0a",
                     host_mac="02:ee:00:00:02:0a")
EP_B = EndpointEntry(ifindex=302, endpoint_id=41, identity=ID_B, pod_mac="02:aa:00:00:02:0b",
                     host_mac="02:ee:00:00:02:0b")
ALLOW_ALL = {
    FlatKey(ep.endpoint_id, 0, direction, 0, 0, 0): FlatValue(int(Verdict.ALLOW), 0)
    for ep in (EP_A, EP_B) for direction in (0, 1)
}
_ports = itertools.count(30000)


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    verdict: str
    direction: int
    src: IPv4Address
    dst: IPv4Address
    sport: int
    dport: int
    is_reply: bool
    endpoint_id: int
    src_identity: int
    dst_identity: int
    rule_ref: int
    ifindex: int
    count: int
    tcp_flags: int


def decode(raw: bytes) -> Event:
    ev = FlowEvent.from_buffer_copy(raw)
    return Event(EventType(ev.type).name, Reason(ev.reason).name, EventVerdict(ev.verdict).name, ev.direction,
                 field_to_ip(ev.saddr), field_to_ip(ev.daddr), field_to_port(ev.sport), field_to_port(ev.dport),
                 bool(ev.is_reply), ev.endpoint_id, ev.src_identity, ev.dst_identity, ev.rule_ref, ev.ifindex,
                 ev.count, ev.tcp_flags)


class Collector:
    def __init__(self, dp) -> None:  # type: ignore[no-untyped-def]
        self.dp, self.events = dp, []  # type: ignore[var-annotated]
        dp.open_events(lambda raw: self.events.append(decode(raw)))

    def drain(self) -> list[Event]:
        self.dp.poll_events(0)
        events, self.events = self.events, []
        return events


@pytest.fixture(scope="module")
def events(datapath) -> Collector:  # type: ignore[no-untyped-def]
    for ip, entry in ((POD_A, EP_A), (POD_B, EP_B)):
        datapath.update_map("endpoints", {ip: entry})
        datapath.update_map("ipcache", {IPv4Network(f"{ip}/32"): IpcacheEntry(entry.identity)})
    return Collector(datapath)


@pytest.fixture(autouse=True)
def fresh(datapath, events: Collector) -> Iterator[None]:  # type: ignore[no-untyped-def]
    datapath.set_event_config(EventConfig())
    datapath.apply_delta("policy", diff({}, datapath.policy()))
    events.drain()
    yield
    datapath.set_event_config(EventConfig())


@contextmanager
def one_cpu() -> Iterator[None]:
    """Token buckets are per CPU: keep every test run of a test on one."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_a(dp, payload, repeat: int = 1) -> int:  # type: ignore[no-untyped-def]
    frame = bytes(Ether(src=EP_A.pod_mac, dst=EP_A.host_mac) / payload)
    return prog_test_run(dp.program_fd("from_container"), frame, ingress_ifindex=EP_A.ifindex, repeat=repeat).retval


def run_b(dp, payload) -> int:  # type: ignore[no-untyped-def]
    frame = bytes(Ether(src=EP_B.pod_mac, dst=EP_B.host_mac) / payload)
    return prog_test_run(dp.program_fd("from_container"), frame, ingress_ifindex=EP_B.ifindex).retval


def spoofed(port: int) -> bytes:
    """A frame from pod A's veth with somebody else's source address."""
    return bytes(Ether(src=EP_A.pod_mac, dst=EP_A.host_mac) / IP(src="10.211.0.99", dst=OUTSIDE) / UDP(sport=port, dport=53))


def stats_delta(before: EventStats, after: EventStats) -> EventStats:
    return EventStats(*(getattr(after, f) - getattr(before, f) for f in ("emitted", "rate_limited", "ringbuf_full", "aggregated")))


def test_config_roundtrip(datapath) -> None:  # type: ignore[no-untyped-def]
    assert datapath.event_config() == EventConfig()
    datapath.set_event_config(EventConfig(enabled=False, rate_per_sec=5, burst=7, aggregate_ms=100))
    assert datapath.event_config() == EventConfig(enabled=False, rate_per_sec=5, burst=7, aggregate_ms=100)


def test_drop_event(datapath, events: Collector) -> None:  # type: ignore[no-untyped-def]
    port = next(_ports)
    frame = spoofed(port)
    assert prog_test_run(datapath.program_fd("from_container"), frame, ingress_ifindex=EP_A.ifindex).retval == TC_ACT_SHOT
    (ev,) = events.drain()
    assert (ev.type, ev.reason, ev.verdict, ev.direction) == ("DROP", "DROP_SPOOFED_IP", "DROPPED", 1)
    assert (ev.src, ev.dst, ev.sport, ev.dport) == (IPv4Address("10.211.0.99"), IPv4Address(OUTSIDE), port, 53)
    assert (ev.ifindex, ev.count) == (EP_A.ifindex, 1)


def test_policy_deny_event_carries_the_rule(datapath, events: Collector) -> None:  # type: ignore[no-untyped-def]
    datapath.update_map("policy", {FlatKey(EP_A.endpoint_id, 0, 1, 6, 25, 16): FlatValue(int(Verdict.DENY), 42)})
    port = next(_ports)
    assert run_a(datapath, IP(src=str(POD_A), dst=OUTSIDE) / TCP(sport=port, dport=25, flags="S")) == TC_ACT_SHOT
    verdict, drop = events.drain()
    assert (verdict.type, verdict.verdict, verdict.reason) == ("POLICY_VERDICT", "DROPPED", "DROP_POLICY_EGRESS")
    assert (verdict.rule_ref, verdict.endpoint_id, verdict.direction) == (42, EP_A.endpoint_id, 1)
    assert (verdict.src_identity, verdict.dst_identity, verdict.tcp_flags) == (ID_A, 2, 0x02)  # WORLD, SYN
    assert (drop.type, drop.reason, drop.sport) == ("DROP", "DROP_POLICY_EGRESS", port)


def test_new_connection_and_its_end(datapath, events: Collector) -> None:  # type: ignore[no-untyped-def]
    datapath.apply_delta("policy", diff(ALLOW_ALL, datapath.policy()))
    port = next(_ports)
    a_to_b = IP(src=str(POD_A), dst=str(POD_B))
    b_to_a = IP(src=str(POD_B), dst=str(POD_A))
    assert run_a(datapath, a_to_b / TCP(sport=port, dport=80, flags="S")) == TC_ACT_REDIRECT
    egress, ingress, new = events.drain()
    assert (egress.type, egress.verdict, egress.direction, egress.endpoint_id) == ("POLICY_VERDICT", "FORWARDED", 1, EP_A.endpoint_id)
    assert (ingress.type, ingress.direction, ingress.endpoint_id) == ("POLICY_VERDICT", 0, EP_B.endpoint_id)
    assert (new.type, new.src_identity, new.dst_identity, new.sport, new.dport) == ("TRACE_NEW", ID_A, ID_B, port, 80)

    run_b(datapath, b_to_a / TCP(sport=80, dport=port, flags="SA"))
    run_a(datapath, a_to_b / TCP(sport=port, dport=80, flags="A"))
    run_a(datapath, a_to_b / TCP(sport=port, dport=80, flags="FA"))
    assert events.drain() == []  # established traffic and a half close emit nothing
    run_b(datapath, b_to_a / TCP(sport=80, dport=port, flags="FA"))
    (end,) = events.drain()
    assert (end.type, end.is_reply, end.src, end.sport, end.endpoint_id) == ("TRACE_END", True, POD_B, 80, EP_B.endpoint_id)
    assert (end.src_identity, end.dst_identity) == (ID_B, ID_A)


def test_flood_of_one_flow_is_one_event(datapath, events: Collector) -> None:  # type: ignore[no-untyped-def]
    before = datapath.event_stats()
    started = time.monotonic()
    result = prog_test_run(datapath.program_fd("from_container"), spoofed(next(_ports)),
                           ingress_ifindex=EP_A.ifindex, repeat=200_000)
    elapsed = time.monotonic() - started
    assert result.retval == TC_ACT_SHOT
    delta = stats_delta(before, datapath.event_stats())
    got = events.drain()
    assert 1 <= len(got) <= 1 + int(elapsed) + 1, (len(got), elapsed)  # at most one per second per flow
    assert delta.emitted == len(got)
    assert delta.aggregated == 200_000 - len(got)


def test_aggregated_event_counts_the_suppressed_drops(datapath, events: Collector) -> None:  # type: ignore[no-untyped-def]
    datapath.set_event_config(EventConfig(aggregate_ms=100))
    frame_port = next(_ports)
    fd = datapath.program_fd("from_container")
    prog_test_run(fd, spoofed(frame_port), ingress_ifindex=EP_A.ifindex, repeat=50)
    time.sleep(0.15)  # what is tested: the 100 ms aggregation window elapses, so the next drop is reported
    prog_test_run(fd, spoofed(frame_port), ingress_ifindex=EP_A.ifindex)
    first, second = events.drain()
    assert (first.count, second.count) == (1, 50)


def test_token_bucket_bounds_many_flows(datapath, events: Collector) -> None:  # type: ignore[no-untyped-def]
    datapath.set_event_config(EventConfig(rate_per_sec=1, burst=5))
    fd = datapath.program_fd("from_container")
    with one_cpu():
        before = datapath.event_stats()
        for _ in range(100):  # 100 different flows: aggregation does not help, the bucket does
            prog_test_run(fd, spoofed(next(_ports)), ingress_ifindex=EP_A.ifindex)
        delta = stats_delta(before, datapath.event_stats())
    assert 5 <= delta.emitted <= 7  # the burst, plus a refill if a second went by
    assert delta.emitted + delta.rate_limited == 100
    assert len(events.drain()) == delta.emitted


def test_full_ring_is_counted(datapath, events: Collector) -> None:  # type: ignore[no-untyped-def]
    datapath.set_event_config(EventConfig(rate_per_sec=10_000_000, burst=10_000_000))
    fd = datapath.program_fd("from_container")
    template = bytearray(spoofed(0))
    sport_at = 14 + 20  # Ether + IPv4 without options
    before = datapath.event_stats()
    for port in range(1, 6001):  # 6000 records of 64 bytes do not fit in 256 KiB unread
        template[sport_at:sport_at + 2] = port.to_bytes(2, "big")
        prog_test_run(fd, bytes(template), ingress_ifindex=EP_A.ifindex)
    delta = stats_delta(before, datapath.event_stats())
    assert delta.ringbuf_full > 0
    assert delta.emitted + delta.ringbuf_full == 6000
    assert len(events.drain()) == delta.emitted


def test_runtime_switch_off(datapath, events: Collector) -> None:  # type: ignore[no-untyped-def]
    datapath.set_event_config(EventConfig(enabled=False))
    before = datapath.event_stats()
    prog_test_run(datapath.program_fd("from_container"), spoofed(next(_ports)), ingress_ifindex=EP_A.ifindex)
    assert events.drain() == [] and datapath.event_stats() == before


def test_compiled_out(pin_root: Path) -> None:
    from membrane.agent.datapath import Datapath

    dp = Datapath(pin_root, events=False)
    dp.load()
    try:
        collector = Collector(dp)
        dp.update_map("endpoints", {POD_A: EP_A})
        assert prog_test_run(dp.program_fd("from_container"), spoofed(1), ingress_ifindex=EP_A.ifindex).retval == TC_ACT_SHOT
        assert collector.drain() == [] and dp.event_stats() == EventStats()
    finally:
        dp.close()
