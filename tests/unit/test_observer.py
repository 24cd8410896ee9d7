"""Flow observer: event decoding, enrichment, the ring, counters and metrics (no grpc here)."""

from __future__ import annotations

import ctypes
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from membrane.agent.datapath import layout
from membrane.agent.observing import (
    EVENT_SIZE,
    EndpointInfo,
    EventType,
    FlowMetricsCollector,
    FlowObserver,
    FlowQuery,
    FlowRing,
    Lost,
    MonotonicClock,
    StaticDirectory,
    decode_event,
    encode_event,
)
from membrane.agent.observing.events import _WIRE
from membrane.flows import Direction, FlowFilter, FlowType, Verdict
from membrane_testkit.waiting import wait_for

WEB_IP, DB_IP = "10.200.1.5", "10.200.1.7"
DIRECTORY = StaticDirectory(
    endpoints={WEB_IP: EndpointInfo("shop", "web-1", {"app": "web"}, 256),
               DB_IP: EndpointInfo("data", "pg-0", {"app": "pg"}, 257)},
    identities={300: {"app": "remote"}, 301: ["k8s:app=cache", "ns:team=x"]},
    rules={7: ["data/allow-web"]},
)


def event(**kw: object) -> bytes:
    base: dict[str, object] = dict(ts_ns=time.monotonic_ns(), saddr=WEB_IP, daddr=DB_IP, sport=40000, dport=5432,
                                   nexthdr=6, type=EventType.POLICY_VERDICT, direction=1, tcp_flags=0x02,
                                   src_identity=256, dst_identity=257, rule_ref=7, len=74, ifindex=12, endpoint_id=3)
    base.update(kw)
    return encode_event(**base)  # type: ignore[arg-type]


def test_decoder_matches_the_ctypes_layout() -> None:
    assert ctypes.sizeof(layout.FlowEvent) == EVENT_SIZE
    # field offsets of the struct format equal the C mirror's (bpf/types.h)
    fmt_offsets, offset = [], 0
    for code in _WIRE.format[1:].replace("4s", "S").replace("2s", "s"):
        size = {"Q": 8, "S": 4, "s": 2, "B": 1, "x": 1, "I": 4, "H": 2}[code]
        if code != "x":
            fmt_offsets.append(offset)
        offset += size
    named = [f for f, _ in layout.FlowEvent._fields_ if not f.startswith("pad")]
    assert fmt_offsets == [getattr(layout.FlowEvent, f).offset for f in named]
    raw = decode_event(event(reason=8, verdict=1, is_reply=1, count=5))
    assert (raw.saddr, raw.daddr, raw.sport, raw.dport) == (WEB_IP, DB_IP, 40000, 5432)
    assert (raw.reason, raw.verdict, raw.is_reply, raw.count, raw.rule_ref, raw.ifindex) == (8, 1, True, 5, 7, 12)
    ev = layout.FlowEvent.from_buffer_copy(event())
    assert ev.sport == int.from_bytes((40000).to_bytes(2, "big"), "little")  # network order in memory


def test_enrichment_names_endpoints_identities_policies() -> None:
    obs = FlowObserver("node1", DIRECTORY)
    obs.on_event(event())
    obs.on_event(event(type=EventType.DROP, verdict=1, reason=7, direction=0, daddr="8.8.8.8", dst_identity=2,
                       nexthdr=17, tcp_flags=0x02, rule_ref=0))
    obs.on_event(event(saddr="10.9.0.1", src_identity=301, type=EventType.TRACE_END, tcp_flags=0x11, rule_ref=0))
    verdict, drop, end = obs.ring.snapshot()[1]
    assert verdict.type is FlowType.POLICY_VERDICT and verdict.verdict is Verdict.FORWARDED
    assert verdict.direction is Direction.EGRESS and verdict.tcp_flags == ("SYN",)
    assert (verdict.source.namespace, verdict.source.pod, verdict.source.labels) == ("shop", "web-1", {"app": "web"})
    assert verdict.destination.identity == 257 and verdict.policies == ("data/allow-web",)
    assert verdict.node == "node1" and verdict.bytes == 74 and verdict.endpoint_id == 3
    assert drop.type is FlowType.DROP and drop.verdict is Verdict.DROPPED
    assert drop.drop_reason == "DROP_POLICY_INGRESS" and drop.direction is Direction.INGRESS
    assert drop.destination.identity_name == "world" and drop.destination.pod == ""
    assert drop.protocol == "UDP" and drop.tcp_flags == ()  # flags only mean something for TCP
    assert end.type is FlowType.TRACE and end.trace_event == "end" and end.tcp_flags == ("ACK", "FIN")
    assert end.source.pod == "" and end.source.labels == {"app": "cache", "ns:team": "x"}
    assert abs((verdict.time - datetime.now(UTC)).total_seconds()) < 5


def test_reserved_identity_names() -> None:
    obs = FlowObserver("n")
    names = []
    for ident in range(1, 8):
        obs.on_event(event(saddr="192.0.2.1", src_identity=ident))
    names = [f.source.identity_name for f in obs.ring.snapshot()[1]]
    assert names == ["host", "world", "unmanaged", "health", "init", "remote-node", "kube-apiserver"]


def test_clock_converts_monotonic_to_wall() -> None:
    clock = MonotonicClock()
    mono = time.monotonic_ns() - 2_000_000_000
    assert abs(clock.to_datetime(mono).timestamp() - (time.time() - 2)) < 0.05


def test_enricher_cache_follows_directory_generation() -> None:
    class Dir(StaticDirectory):
        gen = 0

        def generation(self) -> int:
            return self.gen

    d = Dir({WEB_IP: EndpointInfo("shop", "web-1", {}, 256)})
    obs = FlowObserver("n", d)
    obs.on_event(event())
    d.endpoints[WEB_IP] = EndpointInfo("shop", "web-2", {}, 256)
    obs.on_event(event())
    d.gen += 1
    obs.on_event(event())
    assert [f.source.pod for f in obs.ring.snapshot()[1]] == ["web-1", "web-1", "web-2"]


def test_ring_bounds_and_follower_gaps() -> None:
    obs = FlowObserver("n", capacity=4)
    for port in range(10):
        obs.on_event(event(dport=port))
    assert (obs.ring.held, obs.ring.seen, obs.ring.capacity) == (4, 10, 4)
    assert [f.destination_port for f in obs.ring.snapshot()[1]] == [6, 7, 8, 9]
    missed, nxt, flows = obs.ring.read_after(2)
    assert (missed, nxt, [f.destination_port for f in flows]) == (4, 10, [6, 7, 8, 9])
    with pytest.raises(ValueError):
        FlowRing(0)


def test_counters_and_lost_accounting() -> None:
    obs = FlowObserver("n")
    obs.on_event(event())
    obs.on_event(event(type=EventType.DROP, verdict=1, reason=1, rule_ref=0))
    obs.on_event(b"\x00" * 10)
    obs.update_kernel_lost({"rate_limited": 100, "ringbuf_full": 0})  # first reading: a baseline
    obs.update_kernel_lost({"rate_limited": 130, "ringbuf_full": 2})
    obs.update_kernel_lost({"rate_limited": 5, "ringbuf_full": 2})  # counters reset (new maps)
    st = obs.status()
    assert (st.held, st.seen) == (2, 2)
    assert st.lost_by_reason == {"rate_limited": 35, "ringbuf_full": 2, "decode_error": 1} and st.lost == 38
    assert obs.processed == {("policy-verdict", "forwarded"): 1, ("drop", "dropped"): 1}
    assert obs.policy_verdicts == {("egress", "forwarded"): 1}


def test_metrics_collector_low_cardinality() -> None:
    obs = FlowObserver("n", DIRECTORY, capacity=16)
    obs.on_event(event())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in FlowMetricsCollector(obs).collect() for s in fam.samples}
    assert samples[("membrane_flows_processed_total", (("type", "policy-verdict"), ("verdict", "forwarded")))] == 1
    assert samples[("membrane_policy_verdicts_total", (("direction", "egress"), ("verdict", "forwarded")))] == 1
    assert samples[("membrane_flow_events_lost_total", (("reason", "rate_limited"),))] == 0
    assert samples[("membrane_flows_held", ())] == 1 and samples[("membrane_flows_capacity", ())] == 16
    labels = {k for (_, items) in samples for k, _ in items}
    assert labels <= {"type", "verdict", "direction", "reason"}


def test_stream_last_n_filters_and_time_window() -> None:
    obs = FlowObserver("n", DIRECTORY)
    for port in range(10):
        obs.on_event(event(dport=port, type=EventType.DROP if port % 2 else EventType.TRACE_NEW, verdict=port % 2))
    ports = lambda q: [f.destination_port for f in obs.stream(q)]  # noqa: E731
    assert ports(FlowQuery()) == list(range(10))
    assert ports(FlowQuery(number=3)) == [7, 8, 9]
    assert ports(FlowQuery(number=2, allow=[FlowFilter(verdict=[Verdict.DROPPED])])) == [7, 9]
    assert ports(FlowQuery(deny=[FlowFilter(type=[FlowType.DROP])])) == [0, 2, 4, 6, 8]
    future = datetime.now(UTC) + timedelta(hours=1)
    assert ports(FlowQuery(since=future)) == []
    assert ports(FlowQuery(until=future, number=1)) == [9]


def test_follow_streams_new_flows_and_reports_gaps() -> None:
    obs = FlowObserver("n", capacity=4)
    obs.on_event(event(dport=1))
    got: list[object] = []
    active = threading.Event()
    active.set()

    def reader() -> None:
        for item in obs.stream(FlowQuery(follow=True), is_active=active.is_set, wait_s=0.05):
            got.append(item)
            if len(got) >= 3:
                active.clear()

    t = threading.Thread(target=reader)
    t.start()
    assert wait_for(lambda: obs.streams > 0, 2, 0.01, "the follow stream to open")
    producer = FlowObserver("n")
    for port in range(2, 12):
        producer.on_event(event(dport=port))
    obs.ring.extend(producer.ring.snapshot()[1])  # one poll's batch, more than the ring holds: a gap
    t.join(timeout=5)
    obs.stop()
    assert not t.is_alive()
    assert isinstance(got[0], Lost) and got[0].count == 6
    assert [f.destination_port for f in got[1:]] == [8, 9, 10, 11]  # type: ignore[union-attr]
    assert obs.streams == 0


def test_pump_polls_and_reads_kernel_lost() -> None:
    obs = FlowObserver("n")
    calls = {"n": 0}

    def poll(timeout_ms: int) -> None:
        calls["n"] += 1
        obs.on_event(event(dport=calls["n"]))
        time.sleep(0.005)  # stands in for the perf buffer poll's timeout (paces the pump)

    totals = iter([{"rate_limited": 10}] + [{"rate_limited": 13}] * 10_000)
    obs.start_pump(poll, read_kernel_lost=lambda: next(totals), lost_every_s=0.0)
    assert wait_for(lambda: obs.ring.seen >= 5 and obs.lost["rate_limited"] >= 3, 5, 0.01, "five polls and lost counts")
    obs.stop()
    assert obs.ring.seen >= 5 and obs.lost["rate_limited"] == 3
