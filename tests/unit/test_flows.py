"""Flow model and filters (membrane/flows.py): pure, milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from membrane.flows import (
    Direction,
    Endpoint,
    FilterError,
    Flow,
    FlowFilter,
    FlowType,
    Verdict,
    compile_filter,
    compile_filters,
    flows_from_json_lines,
    labels_from_strings,
    observer_socket_for,
    parse_duration,
    parse_label_selector,
    parse_time_spec,
    tcp_flag_names,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
WEB = Endpoint(identity=256, namespace="shop", pod="web-7d9f", labels={"app": "web", "tier": "front"})
DB = Endpoint(identity=257, namespace="data", pod="pg-0", labels={"app": "pg"})
WORLD = Endpoint(identity=2, identity_name="world")


def flow(src: Endpoint = WEB, dst: Endpoint = DB, **kw: object) -> Flow:
    base: dict[str, object] = dict(time=T0, node="node1", type=FlowType.TRACE, trace_event="new",
                                   verdict=Verdict.FORWARDED, direction=Direction.EGRESS, source_ip="10.0.0.5",
                                   destination_ip="10.0.1.7", protocol="TCP", source_port=40000,
                                   destination_port=5432, tcp_flags=("SYN",), source=src, destination=dst)
    base.update(kw)
    return Flow(**base)  # type: ignore[arg-type]


DROP = flow(type=FlowType.DROP, verdict=Verdict.DROPPED, drop_reason="DROP_POLICY_INGRESS", direction=Direction.INGRESS)
UDP_WORLD = flow(dst=WORLD, protocol="UDP", destination_ip="8.8.8.8", destination_port=53, tcp_flags=())


def matches(flt: FlowFilter, f: Flow) -> bool:
    return compile_filter(flt)(f)


@pytest.mark.parametrize("flt, expected", [
    (FlowFilter(), True),
    (FlowFilter(namespace=["shop"]), True),
    (FlowFilter(namespace=["data"]), True),  # either end
    (FlowFilter(source_namespace=["data"]), False),
    (FlowFilter(destination_namespace=["data"]), True),
    (FlowFilter(pod=["shop/web"]), True),  # name prefix
    (FlowFilter(pod=["shop/"]), True),
    (FlowFilter(pod=["web"]), False),  # no namespace means "default"
    (FlowFilter(source_pod=["data/pg-0"]), False),
    (FlowFilter(destination_pod=["data/pg-0"]), True),
    (FlowFilter(label=["app=pg"]), True),
    (FlowFilter(source_label=["app in (web,api),tier"]), True),
    (FlowFilter(source_label=["app=web,!tier"]), False),
    (FlowFilter(destination_label=["app!=pg"]), False),
    (FlowFilter(identity=[257]), True),
    (FlowFilter(source_identity=[257]), False),
    (FlowFilter(ip=["10.0.1.0/24"]), True),
    (FlowFilter(source_ip=["10.0.1.0/24"]), False),
    (FlowFilter(destination_ip=["10.0.1.7"]), True),
    (FlowFilter(port=[40000]), True),
    (FlowFilter(destination_port=[40000]), False),
    (FlowFilter(protocol=["tcp"]), True),
    (FlowFilter(protocol=["udp", "icmp"]), False),
    (FlowFilter(verdict=[Verdict.DROPPED]), False),
    (FlowFilter(direction=[Direction.EGRESS]), True),
    (FlowFilter(node=["node2"]), False),
    (FlowFilter(type=[FlowType.TRACE]), True),
    # fields AND together
    (FlowFilter(namespace=["shop"], protocol=["udp"]), False),
    (FlowFilter(source_pod=["shop/web"], destination_pod=["data/pg"], destination_port=[5432]), True),
])
def test_filter_fields(flt: FlowFilter, expected: bool) -> None:
    assert matches(flt, flow()) is expected


def test_drop_reason_matches_with_or_without_prefix_any_case() -> None:
    for spelling in ("DROP_POLICY_INGRESS", "policy_ingress", "policy-ingress"):
        assert matches(FlowFilter(drop_reason=[spelling]), DROP)
    assert not matches(FlowFilter(drop_reason=["policy_ingress"]), flow())  # forwarded: no reason
    assert not matches(FlowFilter(drop_reason=["spoofed_ip"]), DROP)


def test_allow_list_ors_filters_and_deny_list_removes() -> None:
    flows = [flow(), DROP, UDP_WORLD]
    pick = lambda allow, deny=(): [f for f in flows if compile_filters(allow, deny)(f)]  # noqa: E731
    assert pick([]) == flows
    assert pick([FlowFilter(verdict=[Verdict.DROPPED]), FlowFilter(protocol=["udp"])]) == [DROP, UDP_WORLD]
    assert pick([], [FlowFilter(identity=[2])]) == [flow(), DROP]
    assert pick([FlowFilter(namespace=["shop"])], [FlowFilter(verdict=[Verdict.DROPPED])]) == [flow(), UDP_WORLD]
    # each deny filter on its own: drop UDP OR dropped flows
    assert pick([], [FlowFilter(protocol=["udp"]), FlowFilter(verdict=[Verdict.DROPPED])]) == [flow()]


def test_non_pod_endpoints_never_match_pod_filters() -> None:
    assert not matches(FlowFilter(destination_pod=["default/"]), UDP_WORLD)
    assert matches(FlowFilter(destination_identity=[2]), UDP_WORLD)


@pytest.mark.parametrize("text, labels, expected", [
    ("app=web", {"app": "web"}, True),
    ("app==web", {"app": "web"}, True),
    ("app!=web", {}, True),  # absent key: "not equal" holds, as in kubectl
    ("app in (web, api)", {"app": "api"}, True),
    ("app notin (web,api),tier", {"app": "db", "tier": "x"}, True),
    ("app notin (web,api),tier", {"app": "db"}, False),
    ("!canary", {"canary": "true"}, False),
    ("", {"x": "y"}, True),
])
def test_label_selector_syntax(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_label_selector(text).matches(labels) is expected


@pytest.mark.parametrize("bad", [FlowFilter(label=["app in web"]), FlowFilter(ip=["10.0.0.300"]),
                                 FlowFilter(pod=[""])])
def test_bad_filter_values_fail_at_compile_time(bad: FlowFilter) -> None:
    with pytest.raises(FilterError):
        compile_filters([bad])


def test_durations_and_time_specs() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("250ms") == timedelta(milliseconds=250)
    for bad in ("", "5", "5x", "m5"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_time_spec("5m", T0) == T0 - timedelta(minutes=5)
    assert parse_time_spec("2024-05-01T11:00:00Z", T0) == T0 - timedelta(hours=1)
    assert parse_time_spec("2024-05-01T11:00:00", T0) == T0 - timedelta(hours=1)  # UTC by default
    with pytest.raises(ValueError):
        parse_time_spec("yesterday", T0)


def test_json_round_trip_and_helpers() -> None:
    lines = [f.model_dump_json() for f in (flow(), DROP, UDP_WORLD)]
    assert flows_from_json_lines(lines + [""]) == [flow(), DROP, UDP_WORLD]
    assert tcp_flag_names(0x12) == ("SYN", "ACK")
    assert labels_from_strings(["k8s:app=web", "reserved:world"]) == {"app": "web", "reserved:world": ""}
    assert str(observer_socket_for("/run/membrane/node1.sock")) == "/run/membrane/node1.observer.sock"
