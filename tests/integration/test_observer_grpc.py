"""The gRPC Observer end to end: server on a unix socket and on 127.0.0.1, membranectl observe."""

from __future__ import annotations

import argparse
import json
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from membrane.agent.observing import (
    EndpointInfo,
    EventType,
    FlowObserver,
    ObserverServer,
    StaticDirectory,
    encode_event,
)
from membrane.api.observer.v1 import observer_pb2 as pb
from membrane.api.observer.v1 import observer_pb2_grpc as pb_grpc
from membrane.api.observer_codec import filter_from_pb, filter_to_pb, flow_from_pb, flow_to_pb
from membrane.ctl.main import parse_args
from membrane.ctl.observe import build_filters, fetch_flows, format_compact, run_observe
from membrane.flows import Direction, FlowFilter, FlowType, Verdict
from membrane_testkit.waiting import wait_for

DIRECTORY = StaticDirectory(
    endpoints={"10.200.1.5": EndpointInfo("shop", "web-1", {"app": "web"}, 256),
               "10.200.1.7": EndpointInfo("data", "pg-0", {"app": "pg"}, 257)},
    rules={7: ["data/allow-web"]},
)


def event(**kw: object) -> bytes:
    base: dict[str, object] = dict(ts_ns=time.monotonic_ns(), saddr="10.200.1.5", daddr="10.200.1.7", sport=40000,
                                   dport=5432, nexthdr=6, type=EventType.POLICY_VERDICT, direction=1, tcp_flags=2,
                                   src_identity=256, dst_identity=257, rule_ref=7, len=74)
    base.update(kw)
    return encode_event(**base)  # type: ignore[arg-type]


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[FlowObserver, str, str]]:
    obs = FlowObserver("node1", DIRECTORY, capacity=64)
    obs.on_event(event())
    obs.on_event(event(type=EventType.DROP, verdict=1, reason=7, direction=0, rule_ref=0, daddr="8.8.8.8",
                       dst_identity=2, nexthdr=17, dport=53))
    obs.on_event(event(type=EventType.TRACE_NEW, rule_ref=0, dport=6379))
    sock = tmp_path / "node1.observer.sock"
    server = ObserverServer(obs, sock, tcp="127.0.0.1:0")
    server.start()
    try:
        yield obs, f"unix://{sock}", f"127.0.0.1:{server.tcp_port}"
    finally:
        server.stop(0.1)
    assert not sock.exists()


def test_codec_round_trips() -> None:
    obs = FlowObserver("n", DIRECTORY)
    obs.on_event(event())
    flow = obs.ring.snapshot()[1][0]
    assert flow_from_pb(flow_to_pb(flow)) == flow
    flt = FlowFilter(namespace=["a"], source_pod=["a/b"], label=["x in (1,2)"], identity=[2], ip=["10.0.0.0/8"],
                     port=[53], protocol=["udp"], verdict=[Verdict.DROPPED], drop_reason=["policy_ingress"],
                     direction=[Direction.INGRESS], node=["n1"], type=[FlowType.DROP])
    assert filter_from_pb(filter_to_pb(flt)) == flt


def test_get_flows_and_status_on_unix_and_tcp(served: tuple[FlowObserver, str, str]) -> None:
    _obs, unix, tcp = served
    for server in (unix, tcp):
        flows = [f for f in fetch_flows(server, timeout=10) if not isinstance(f, int)]
        assert [f.destination_port for f in flows] == [5432, 53, 6379]  # type: ignore[union-attr]
        dropped = list(fetch_flows(server, allow=[FlowFilter(verdict=[Verdict.DROPPED])], timeout=10))
        assert [f.destination.identity_name for f in dropped] == ["world"]  # type: ignore[union-attr]
        deny = list(fetch_flows(server, deny=[FlowFilter(protocol=["udp"]), FlowFilter(type=[FlowType.TRACE])],
                                timeout=10))
        assert [f.policies for f in deny] == [("data/allow-web",)]  # type: ignore[union-attr]
        assert len(list(fetch_flows(server, number=1, timeout=10))) == 1
        assert list(fetch_flows(server, timeout=10, batch=False)) == flows  # one flow per message
    with grpc.insecure_channel(unix) as channel:
        st = pb_grpc.ObserverStub(channel).ServerStatus(pb.ServerStatusRequest(), timeout=10)
    assert (st.num_flows, st.max_flows, st.seen_flows, st.node_name) == (3, 64, 3, "node1")
    assert st.lost_events_by_reason["decode_error"] == 0 and st.uptime_ns > 0


def test_bad_filter_is_invalid_argument(served: tuple[FlowObserver, str, str]) -> None:
    _obs, unix, _tcp = served
    with pytest.raises(grpc.RpcError) as err:
        list(fetch_flows(unix, allow=[FlowFilter(ip=["not-an-ip"])], timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]


def test_follow_gets_new_flows(served: tuple[FlowObserver, str, str]) -> None:
    obs, unix, _tcp = served
    got: list[object] = []
    stream = fetch_flows(unix, follow=True, allow=[FlowFilter(destination_port=[9999])], timeout=10)

    def read() -> None:
        for item in stream:
            got.append(item)
            return

    t = threading.Thread(target=read)
    t.start()
    assert wait_for(lambda: obs.streams > 0, 5, 0.01, "the follow stream to open")
    obs.on_event(event(dport=1))  # filtered out
    obs.on_event(event(dport=9999))
    t.join(timeout=10)
    assert not t.is_alive() and [f.destination_port for f in got] == [9999]  # type: ignore[attr-defined]
    stream.close()  # cancels the call: the server's follower goes away
    assert wait_for(lambda: obs.streams == 0, 5, 0.02, "the follower to go away")


def parse(argv: list[str]) -> argparse.Namespace:
    return parse_args(argv)  # membranectl's own parser


def test_flags_build_allow_and_deny_lists() -> None:
    allow, deny = build_filters(parse(["observe", "--from-pod", "shop/web", "--to-pod", "data/pg", "--port", "5432",
                                       "--identity", "world", "--verdict", "dropped", "--direction", "ingress",
                                       "--label", "app in (a,b)", "--not-namespace", "kube-system",
                                       "--not-protocol", "udp", "--not-protocol", "icmp"]))
    assert allow == [FlowFilter(source_pod=["shop/web"], destination_pod=["data/pg"], port=[5432], identity=[2],
                                verdict=[Verdict.DROPPED], direction=[Direction.INGRESS], label=["app in (a,b)"])]
    assert deny == [FlowFilter(namespace=["kube-system"]), FlowFilter(protocol=["udp", "icmp"])]
    with pytest.raises(ValueError):
        build_filters(parse(["observe", "--verdict", "maybe"]))


def test_membranectl_observe_outputs(served: tuple[FlowObserver, str, str], capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    _obs, unix, tcp = served
    assert run_observe(parse(["observe", "--server", unix])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "shop/web-1:40000 (ID:256) -> data/pg-0:5432 (ID:257) policy-verdict EGRESS TCP SYN FORWARDED " \
           "by data/allow-web" in lines[0]
    assert "-> 8.8.8.8:53 (world) drop INGRESS UDP DROPPED (DROP_POLICY_INGRESS)" in lines[1]
    assert run_observe(parse(["-o", "json", "observe", "--server", tcp, "--verdict", "dropped"])) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["drop_reason"] for r in rows] == ["DROP_POLICY_INGRESS"]
    svg = tmp_path / "map.svg"
    assert run_observe(parse(["observe", "--server", unix, "--graph", str(svg), "-o", "json", "--since", "1h"])) == 0
    root = ET.fromstring(svg.read_text())
    assert {g.get("data-id") for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"} == \
        {"shop/web-1", "data/pg-0", "world"}
    assert run_observe(parse(["observe", "--server", unix, "--status", "-o", "json"])) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["num_flows"] == "3"  # uint64 as JSON string


def test_membranectl_observe_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_observe(parse(["observe", "--server", f"unix://{tmp_path}/nothing.sock"])) == 1
    assert "cannot reach the observer" in capsys.readouterr().err
    assert run_observe(parse(["observe", "--server", "unix:///x", "--since", "yesterday"])) == 2


def test_compact_format_of_icmp_reply() -> None:
    obs = FlowObserver("n", DIRECTORY)
    obs.on_event(event(nexthdr=1, type=EventType.TRACE_NEW, rule_ref=0, is_reply=1, tcp_flags=0, count=3))
    line = format_compact(obs.ring.snapshot()[1][0])
    assert "shop/web-1 (ID:256) <- data/pg-0 (ID:257) trace:new EGRESS ICMP FORWARDED x3" in line
