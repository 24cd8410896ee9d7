"""Service map SVG (membrane/servicemap.py): structure and determinism."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from membrane.flows import Direction, Endpoint, Flow, FlowType, Verdict
from membrane.servicemap import build_service_map, render_svg

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2024, 5, 1, tzinfo=UTC)


def ep(ns: str, pod: str) -> Endpoint:
    return Endpoint(identity=300, namespace=ns, pod=pod)


WORLD = Endpoint(identity=2, identity_name="world")
FE, API, DB = ep("shop", "frontend"), ep("shop", "api"), ep("data", "postgres-0")


def f(src: Endpoint, dst: Endpoint, port: int, dropped: bool = False, reason: str = "", count: int = 1,
      reply: bool = False, proto: str = "TCP") -> Flow:
    return Flow(time=T0, type=FlowType.DROP if dropped else FlowType.TRACE,
                verdict=Verdict.DROPPED if dropped else Verdict.FORWARDED, drop_reason=reason,
                direction=Direction.EGRESS, source_ip="10.0.0.1", destination_ip="10.0.0.2", protocol=proto,
                source_port=port if reply else 40000, destination_port=40000 if reply else port,
                source=src, destination=dst, count=count, is_reply=reply)


FLOWS = [f(WORLD, FE, 443, count=30), f(FE, API, 8080, count=5), f(API, DB, 5432, count=3),
         f(DB, API, 5432, reply=True, count=2), f(FE, DB, 5432, dropped=True, reason="DROP_POLICY_INGRESS", count=4),
         f(API, API, 9000)]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def test_nodes_grouped_by_namespace() -> None:
    root = parse(render_svg(FLOWS))
    nodes = {g.get("data-id"): g.get("data-namespace") for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    assert nodes == {"shop/frontend": "shop", "shop/api": "shop", "data/postgres-0": "data", "world": ""}
    groups = {g.get("data-namespace") for g in root.iter(f"{SVG}g") if g.get("class") == "namespace"}
    assert groups == {"shop", "data", ""}
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {"frontend", "api", "postgres-0", "world", "shop", "data", "outside the cluster"} <= texts


def test_edges_counts_replies_and_drops() -> None:
    root = parse(render_svg(FLOWS))
    edges = {(g.get("data-source"), g.get("data-target"), g.get("class")): g for g in root.iter(f"{SVG}g")
             if (g.get("class") or "").startswith("edge ")}
    # the reply is folded into its connection's edge, and counts no connection of its own
    assert edges[("shop/api", "data/postgres-0", "edge forwarded")].get("data-count") == "3"
    assert ("data/postgres-0", "shop/api", "edge forwarded") not in edges
    drop = edges[("shop/frontend", "data/postgres-0", "edge dropped")]
    assert drop.get("data-count") == "4" and drop.get("data-reasons") == "DROP_POLICY_INGRESS"
    path = drop.find(f"{SVG}path")
    assert path is not None and path.get("stroke") == "#d62728" and path.get("stroke-dasharray")
    labels = [t.text for g in root.iter(f"{SVG}g") if (g.get("class") or "") == "edge-label dropped"
              for t in g.iter(f"{SVG}text")]
    assert labels == ["4 dropped \u00b7 POLICY_INGRESS"]
    assert ("shop/api", "shop/api", "edge forwarded") in edges  # self loop drawn
    assert len(edges) == 5


def test_layout_is_deterministic_and_left_to_right() -> None:
    assert render_svg(FLOWS) == render_svg(list(reversed(FLOWS)))
    root = parse(render_svg(FLOWS))
    x = {g.get("data-id"): float(g.find(f"{SVG}rect").get("x")) for g in root.iter(f"{SVG}g")  # type: ignore[union-attr]
         if g.get("class") == "node"}
    assert x["world"] < x["shop/frontend"] < x["data/postgres-0"]  # clients left, servers right


def test_empty_and_escaping() -> None:
    parse(render_svg([]))
    odd = Endpoint(identity=300, namespace="a&b", pod="<pod>")
    root = parse(render_svg([f(odd, WORLD, 80)]))
    assert any(g.get("data-id") == "a&b/<pod>" for g in root.iter(f"{SVG}g"))
    assert build_service_map([]).nodes == {}


def test_counts_connections_and_packets_not_events() -> None:
    """What a real agent emits: per connection the egress and ingress verdicts, trace:new and
    trace:end; per denied packet a policy verdict and a drop. The map counts connections and
    packets, and a connection denied at ingress is no forwarded edge too."""
    def ev(src: Endpoint, dst: Endpoint, sport: int, ftype: FlowType, verdict: Verdict, trace: str = "",
           direction: Direction = Direction.EGRESS, count: int = 1, reason: str = "") -> Flow:
        return Flow(time=T0, type=ftype, verdict=verdict, trace_event=trace, direction=direction,
                    drop_reason=reason, source_ip="10.0.0.1", destination_ip="10.0.0.2", protocol="TCP",
                    source_port=sport, destination_port=8080, source=src, destination=dst, count=count)

    flows = []
    for sport in (40001, 40002):  # two allowed connections FE -> API
        flows += [ev(FE, API, sport, FlowType.POLICY_VERDICT, Verdict.FORWARDED),
                  ev(FE, API, sport, FlowType.POLICY_VERDICT, Verdict.FORWARDED, direction=Direction.INGRESS),
                  ev(FE, API, sport, FlowType.TRACE, Verdict.FORWARDED, "new"),
                  ev(FE, API, sport, FlowType.TRACE, Verdict.FORWARDED, "end")]
    reason = "DROP_POLICY_INGRESS"
    flows += [ev(FE, DB, 40003, FlowType.POLICY_VERDICT, Verdict.FORWARDED),  # egress allowed at FE ...
              ev(FE, DB, 40003, FlowType.POLICY_VERDICT, Verdict.DROPPED, direction=Direction.INGRESS, count=3,
                 reason=reason),  # ... denied at DB: 3 SYNs
              ev(FE, DB, 40003, FlowType.DROP, Verdict.DROPPED, direction=Direction.INGRESS, count=3, reason=reason)]
    smap = build_service_map(flows)
    edges = {(e.source, e.target, e.dropped): e for e in smap.edges}
    assert set(edges) == {("shop/frontend", "shop/api", False), ("shop/frontend", "data/postgres-0", True)}
    assert edges[("shop/frontend", "shop/api", False)].count == 2
    assert edges[("shop/frontend", "shop/api", False)].flows == 8
    assert edges[("shop/frontend", "data/postgres-0", True)].count == 3
    svg = render_svg(smap)
    assert "2 connections \u00b7 TCP/8080" in svg and "3 dropped \u00b7 POLICY_INGRESS" in svg
