"""The service table (membrane/services.py): frontends and the backends each one uses."""

from __future__ import annotations

from collections.abc import Mapping

from membrane.api.state_objects import (
    EndpointPortState,
    EndpointSliceState,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
)
from membrane.services import Backend, Frontend, health_checks, service_table

NODE = "node-a"
HTTP = ServicePortState("http", "TCP", 80, "8080")


def svc(name: str = "web", ports: tuple[ServicePortState, ...] = (HTTP,), **kw: object) -> ServiceState:
    kw.setdefault("cluster_ips", ("10.96.0.10",))
    return ServiceState("shop", name, ports=ports, **kw)  # type: ignore[arg-type]  # test shorthand


def ep(ip: str, node: str = NODE, ready: bool = True, serving: bool | None = None, terminating: bool = False,
       zone: str = "") -> SliceEndpointState:
    return SliceEndpointState((ip,), ready, ready if serving is None else serving, terminating, node, zone)


def eps(name: str, endpoints: tuple[SliceEndpointState, ...], ports: tuple[EndpointPortState, ...] = (
        EndpointPortState("http", "TCP", 8080),), service: str = "web", family: str = "IPv4") -> EndpointSliceState:
    return EndpointSliceState("shop", name, service, family, ports, endpoints)


def ips(entry_backends: tuple[Backend, ...]) -> list[str]:
    return [b.ip for b in entry_backends]


def only(table: Mapping[Frontend, object], kind: str) -> list[Frontend]:
    return [f for f in table if f.kind == kind]


def test_cluster_ip_frontend_with_ready_backends_sorted() -> None:
    table = service_table([svc()], [eps("web-1", (ep("10.1.0.9"), ep("10.1.0.10"), ep("10.1.0.2")))], NODE)
    (front,) = table
    assert front == Frontend("10.96.0.10", 80, "TCP", "ClusterIP")
    entry = table[front]
    assert (entry.namespace, entry.name, entry.port_name, entry.service) == ("shop", "web", "http", "shop/web")
    assert ips(entry.backends) == ["10.1.0.2", "10.1.0.9", "10.1.0.10"]  # numeric order, stable for Maglev
    assert {b.port for b in entry.backends} == {8080}
    assert entry.backends[0].key == "10.1.0.2:8080" and entry.affinity_timeout == 0


def test_slices_of_other_services_and_namespaces_are_ignored() -> None:
    other_ns = EndpointSliceState("other", "web-x", "web", "IPv4", (EndpointPortState("http", "TCP", 8080),),
                                  (ep("10.9.9.9"),))
    table = service_table([svc()], [eps("web-1", (ep("10.1.0.1"),)), eps("db-1", (ep("10.2.0.1"),), service="db"),
                                    other_ns, eps("orphan", (ep("10.3.0.1"),), service="")], NODE)
    assert [ips(e.backends) for e in table.values()] == [["10.1.0.1"]]


def test_readiness_then_serving_terminating_fallback_then_refusal() -> None:
    ready = ep("10.1.0.1")
    not_ready = ep("10.1.0.2", ready=False, serving=False)
    terminating = ep("10.1.0.3", ready=False, serving=True, terminating=True)
    terminating_dead = ep("10.1.0.4", ready=False, serving=False, terminating=True)
    starting = ep("10.1.0.5", ready=False, serving=False)

    def backends(*endpoints: SliceEndpointState) -> list[str]:
        (entry,) = service_table([svc()], [eps("web-1", endpoints)], NODE).values()
        return ips(entry.backends)

    assert backends(ready, not_ready, terminating, terminating_dead) == ["10.1.0.1"]
    assert backends(not_ready, terminating, terminating_dead) == ["10.1.0.3"]  # fallback
    assert backends(not_ready, terminating_dead, starting) == []  # refuse, never a timeout
    assert backends() == []
    # A service with no slice at all still has its frontend, with no backend: it refuses.
    (entry,) = service_table([svc()], [], NODE).values()
    assert entry.backends == ()


def test_named_target_port_resolved_per_endpoint_by_its_slice() -> None:
    # Two pod versions name "http" differently: the EndpointSlice controller puts them in two
    # slices with their own port numbers.
    old = eps("web-old", (ep("10.1.0.1"),), (EndpointPortState("http", "TCP", 8080),))
    new = eps("web-new", (ep("10.1.0.2"),), (EndpointPortState("http", "TCP", 9090),))
    (entry,) = service_table([svc(ports=(ServicePortState("http", "TCP", 80, "web"),))], [old, new], NODE).values()
    assert [(b.ip, b.port) for b in entry.backends] == [("10.1.0.1", 8080), ("10.1.0.2", 9090)]


def test_several_ports_and_tcp_and_udp_on_one_port() -> None:
    ports = (ServicePortState("dns", "UDP", 53, "5353"), ServicePortState("dns-tcp", "TCP", 53, "5353"),
             ServicePortState("metrics", "TCP", 9153, "9153"))
    slice_ports = (EndpointPortState("dns", "UDP", 5353), EndpointPortState("dns-tcp", "TCP", 5353),
                   EndpointPortState("metrics", "TCP", 9153))
    table = service_table([svc("kube-dns", ports)], [eps("dns-1", (ep("10.1.0.7"),), slice_ports, "kube-dns")], NODE)
    got = {(f.port, f.protocol): (e.port_name, [(b.ip, b.port) for b in e.backends]) for f, e in table.items()}
    assert got == {(53, "UDP"): ("dns", [("10.1.0.7", 5353)]), (53, "TCP"): ("dns-tcp", [("10.1.0.7", 5353)]),
                   (9153, "TCP"): ("metrics", [("10.1.0.7", 9153)])}


def test_slice_port_must_match_name_and_protocol() -> None:
    wrong = eps("web-1", (ep("10.1.0.1"),), (EndpointPortState("http", "UDP", 8080),
                                             EndpointPortState("other", "TCP", 8080)))
    unset = eps("web-2", (ep("10.1.0.2"),), (EndpointPortState("http", "TCP", 0),))
    (entry,) = service_table([svc()], [wrong, unset], NODE).values()
    assert entry.backends == ()


def test_unnamed_single_port() -> None:
    port = ServicePortState("", "TCP", 80, "8080")
    (entry,) = service_table([svc(ports=(port,))], [eps("web-1", (ep("10.1.0.1"),),
                                                        (EndpointPortState("", "TCP", 8080),))], NODE).values()
    assert entry.port_name == "" and ips(entry.backends) == ["10.1.0.1"]


def test_headless_and_external_name_have_no_entries() -> None:
    slices = [eps("web-1", (ep("10.1.0.1"),))]
    assert service_table([svc(cluster_ips=())], slices, NODE) == {}
    assert service_table([svc(type="ExternalName", cluster_ips=())], slices, NODE) == {}
    # Even with external IPs, a headless service has no datapath entries.
    assert service_table([svc(cluster_ips=(), external_ips=("192.0.2.1",))], slices, NODE) == {}


def test_node_port_one_frontend_per_node_address_of_the_service_family() -> None:
    port = ServicePortState("http", "TCP", 80, "8080", node_port=30080)
    table = service_table([svc(type="NodePort", ports=(port,))], [eps("web-1", (ep("10.1.0.1"),))], NODE,
                          node_addresses=("192.168.1.10", "172.16.0.10", "fd00::10", "192.168.1.10"))
    assert only(table, "NodePort") == [Frontend("172.16.0.10", 30080, "TCP", "NodePort"),
                                       Frontend("192.168.1.10", 30080, "TCP", "NodePort")]
    assert only(table, "ClusterIP") == [Frontend("10.96.0.10", 80, "TCP", "ClusterIP")]
    assert all(ips(e.backends) == ["10.1.0.1"] for e in table.values())
    # No node address given: no NodePort frontend (nothing to look up).
    assert only(service_table([svc(type="NodePort", ports=(port,))], [], NODE), "NodePort") == []
    # A ClusterIP service ignores a stray nodePort.
    assert only(service_table([svc(ports=(port,))], [], NODE, ("192.168.1.10",)), "NodePort") == []


def test_load_balancer_ingress_and_external_ips() -> None:
    port = ServicePortState("http", "TCP", 80, "8080", node_port=30080)
    service = svc(type="LoadBalancer", ports=(port,), external_ips=("192.0.2.7",),
                  load_balancer_ips=("203.0.113.5", "2001:db8::5"))
    table = service_table([service], [eps("web-1", (ep("10.1.0.1"),))], NODE, ("192.168.1.10",))
    assert sorted((f.ip, f.port, f.kind) for f in table) == [
        ("10.96.0.10", 80, "ClusterIP"), ("192.0.2.7", 80, "ExternalIP"), ("192.168.1.10", 30080, "NodePort"),
        ("203.0.113.5", 80, "LoadBalancer")]  # the IPv6 ingress: the service has no IPv6 cluster IP
    # LoadBalancer IPs are frontends of LoadBalancer services only.
    plain = svc(load_balancer_ips=("203.0.113.5",))
    assert only(service_table([plain], [], NODE), "LoadBalancer") == []


def test_external_traffic_policy_local_filters_external_frontends_only() -> None:
    port = ServicePortState("http", "TCP", 80, "8080", node_port=30080)
    service = svc(type="LoadBalancer", ports=(port,), external_traffic_local=True, health_check_node_port=32000,
                  load_balancer_ips=("203.0.113.5",), external_ips=("192.0.2.7",))
    slices = [eps("web-1", (ep("10.1.0.1", "node-a"), ep("10.2.0.1", "node-b")))]
    table = service_table([service], slices, "node-a", ("192.168.1.10",))
    for front, entry in table.items():
        assert entry.external_local and not entry.internal_local and entry.health_check_node_port == 32000
        expected = ["10.1.0.1", "10.2.0.1"] if front.kind == "ClusterIP" else ["10.1.0.1"]
        assert ips(entry.backends) == expected, front
    # On a node without a local endpoint: external frontends refuse (the load balancer's health
    # check steers traffic away), the cluster IP still reaches every endpoint.
    table = service_table([service], slices, "node-c", ("192.168.1.11",))
    assert {f.kind: ips(e.backends) for f, e in table.items()} == {
        "ClusterIP": ["10.1.0.1", "10.2.0.1"], "NodePort": [], "LoadBalancer": [], "ExternalIP": []}


def test_local_policy_falls_back_to_local_terminating_only() -> None:
    service = svc(internal_traffic_local=True)
    slices = [eps("web-1", (ep("10.1.0.1", "node-a", ready=False, serving=True, terminating=True),
                            ep("10.2.0.1", "node-b")))]
    (entry,) = service_table([service], slices, "node-a").values()
    assert entry.internal_local and ips(entry.backends) == ["10.1.0.1"]  # never the remote ready one


def test_internal_traffic_policy_local_filters_cluster_ip_only() -> None:
    port = ServicePortState("http", "TCP", 80, "8080", node_port=30080)
    service = svc(type="NodePort", ports=(port,), internal_traffic_local=True)
    slices = [eps("web-1", (ep("10.1.0.1", "node-a"), ep("10.2.0.1", "node-b")))]
    table = service_table([service], slices, "node-b", ("192.168.1.11",))
    assert {f.kind: ips(e.backends) for f, e in table.items()} == {
        "ClusterIP": ["10.2.0.1"], "NodePort": ["10.1.0.1", "10.2.0.1"]}


def test_client_ip_affinity_carried_to_every_frontend() -> None:
    port = ServicePortState("http", "TCP", 80, "8080", node_port=30080)
    service = svc(type="NodePort", ports=(port,), affinity_timeout=600)
    table = service_table([service], [eps("web-1", (ep("10.1.0.1"),))], NODE, ("192.168.1.10",))
    assert len(table) == 2 and {e.affinity_timeout for e in table.values()} == {600}
    (entry,) = service_table([svc()], [], NODE).values()
    assert entry.affinity_timeout == 0


def test_duplicate_endpoint_across_slices_keeps_most_usable_state() -> None:
    # During a slice update an endpoint can sit in two slices for a moment.
    a = eps("web-1", (ep("10.1.0.1", ready=False, serving=False),))
    b = eps("web-2", (ep("10.1.0.1"),))
    for slices in ([a, b], [b, a]):
        (entry,) = service_table([svc()], slices, NODE).values()
        assert [(x.ip, x.ready) for x in entry.backends] == [("10.1.0.1", True)]


def test_dual_stack_backends_follow_the_frontend_family() -> None:
    service = svc(cluster_ips=("10.96.0.10", "fd00:96::10"))
    slices = [eps("web-v4", (ep("10.1.0.1"),)), eps("web-v6", (ep("fd00:1::1"),), family="IPv6"),
              eps("web-fqdn", (SliceEndpointState(("web.example.com",)),), family="FQDN")]
    table = service_table([service], slices, NODE)
    assert {f.ip: ips(e.backends) for f, e in table.items()} == {"10.96.0.10": ["10.1.0.1"],
                                                                   "fd00:96::10": ["fd00:1::1"]}
    assert str(next(f for f in table if f.ip == "fd00:96::10")) == "[fd00:96::10]:80/TCP"


def test_colliding_frontends_resolve_alike_on_every_node() -> None:
    a = ServiceState("a", "first", cluster_ips=("10.96.0.1",), ports=(HTTP,), external_ips=("10.96.0.2",))
    b = ServiceState("b", "second", cluster_ips=("10.96.0.2",), ports=(HTTP,))
    c = ServiceState("c", "third", cluster_ips=("10.96.0.3",), ports=(HTTP,), external_ips=("192.0.2.1",))
    d = ServiceState("d", "fourth", cluster_ips=("10.96.0.4",), ports=(HTTP,), external_ips=("192.0.2.1",))
    for order in ([a, b, c, d], [d, c, b, a]):
        table = service_table(order, [], NODE)
        owner = {f.ip: e.service for f, e in table.items()}
        assert owner["10.96.0.2"] == "b/second"  # a cluster IP beats another's external IP
        assert owner["192.0.2.1"] == "c/third"  # else the first service in (namespace, name) order
        assert len({f.address for f in table}) == len(table)


def test_backend_states() -> None:
    assert Backend("10.0.0.1", 80).state == "ready"
    assert Backend("10.0.0.1", 80, ready=False, serving=True, terminating=True).state == "terminating"
    assert Backend("10.0.0.1", 80, ready=False, serving=False).state == "not-ready"
    assert Backend("fd00::1", 80).key == "[fd00::1]:80"


def test_health_check_counts_local_usable_endpoints() -> None:
    port = ServicePortState("http", "TCP", 80, "8080", node_port=30080)
    service = svc(type="LoadBalancer", ports=(port,), external_traffic_local=True, health_check_node_port=32000)
    slices = [eps("web-1", (ep("10.1.0.1", "node-a"), ep("10.1.0.2", "node-a", ready=False, serving=False),
                            ep("10.2.0.1", "node-b")))]
    assert health_checks([service], slices, "node-a")[32000].local_endpoints == 1
    assert health_checks([service], slices, "node-c")[32000].local_endpoints == 0
    assert health_checks([svc()], slices, "node-a") == {}
