"""Flows name the Service (agent/service_flows.py): translation events and the connection's flows."""

from __future__ import annotations

from membrane.agent.lb_syncing import FrontendInfo
from membrane.agent.observing import Enricher
from membrane.agent.observing.events import EventType, RawEvent, decode_event, encode_event
from membrane.agent.service_flows import ServiceFlows


class FakeLb:
    def frontend_info(self, rev_nat_index: int) -> FrontendInfo | None:
        return FrontendInfo("shop/web", "10.96.0.10:80/TCP", "ClusterIP", "http") if rev_nat_index == 7 else None

    def service_rows(self) -> list[dict[str, object]]:
        return []

    def summary(self) -> dict[str, int]:
        return {}


def raw(**fields: int | str) -> RawEvent:
    return decode_event(encode_event(**fields))


def test_translation_and_the_connection_flows_name_the_service() -> None:
    reads: list[int] = []

    def clients() -> dict[int, str]:
        reads.append(1)
        return {99: "10.200.1.7"}
    flows = ServiceFlows(FakeLb(), clients)
    enricher = Enricher("n1")
    enricher.services = flows.describe
    translation = enricher.flow(raw(type=EventType.TRANSLATION, saddr="10.96.0.10", sport=80, daddr="10.200.1.5",
                                    dport=8080, nexthdr=6, rule_ref=7, netns_cookie=99))
    assert (translation.trace_event, translation.service) == ("translation", "shop/web")
    assert translation.translation == "10.96.0.10:80 -> 10.200.1.5:8080"
    forward = enricher.flow(raw(type=EventType.TRACE_NEW, saddr="10.200.1.7", sport=40000, daddr="10.200.1.5",
                                dport=8080, nexthdr=6))
    reply = enricher.flow(raw(type=EventType.TRACE_END, saddr="10.200.1.5", sport=8080, daddr="10.200.1.7",
                              dport=40000, nexthdr=6))
    assert forward.service == reply.service == "shop/web"
    other = enricher.flow(raw(type=EventType.TRACE_NEW, saddr="10.200.1.8", sport=40000, daddr="10.200.1.5",
                              dport=8080, nexthdr=6))
    assert other.service == ""  # another client: not through the service
    assert reads == [1]  # the cookies were read once


def test_refusals_and_unknown_frontends() -> None:
    flows = ServiceFlows(FakeLb(), dict)
    refused = flows.describe(raw(type=EventType.TRANSLATION, saddr="10.96.0.10", sport=80, nexthdr=6, rule_ref=7,
                                 verdict=1, reason=14))
    assert refused == ("shop/web", "10.96.0.10:80 -> refused")
    assert flows.describe(raw(type=EventType.TRANSLATION, saddr="10.96.0.11", sport=80, rule_ref=8)) is None


def test_a_device_translation_names_the_outside_clients_connection() -> None:
    """NodePort at the node's device: the client's address rides in the event, no namespace to map."""
    flows = ServiceFlows(FakeLb(), dict)
    enricher = Enricher("n1")
    enricher.services = flows.describe
    client = int.from_bytes(bytes([192, 0, 2, 60]), "little")  # network order, as the datapath stores it
    translation = enricher.flow(raw(type=EventType.TRANSLATION, saddr="192.0.2.41", sport=30081,
                                    daddr="10.200.1.5", dport=8080, nexthdr=6, rule_ref=7, ifindex=3,
                                    netns_cookie=client))
    assert (translation.service, translation.translation) == ("shop/web", "192.0.2.41:30081 -> 10.200.1.5:8080")
    inside = enricher.flow(raw(type=EventType.TRACE_NEW, saddr="192.0.2.60", sport=41000, daddr="10.200.1.5",
                               dport=8080, nexthdr=6))
    assert inside.service == "shop/web" and inside.translation == translation.translation
