"""bpf_host.c on crafted packets (BPF_PROG_TEST_RUN): NodePort translation, its reverse, refusals.

The lb maps hold what the LB manager would write for a NodePort service (`membrane.lb_maps`
from the service table); packets are built and checked with scapy, checksums included.
"""

from __future__ import annotations

from typing import Any

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from membrane.agent.datapath.prog_test_run import TC_ACT_OK, TC_ACT_REDIRECT, prog_test_run
from membrane.api.state_objects import (
    EndpointPortState,
    EndpointSliceState,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
)
from membrane.lb_maps import LbIds, desired_contents
from membrane.services import service_table

NODE, NODE_IP, CLIENT = "n1", "192.0.2.77", "203.0.113.9"
BACKEND = "10.233.7.5"
MACS = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}


def _write(dp: Any, endpoints: tuple[str, ...], node_port: int) -> None:
    svc = ServiceState("shop", f"web{node_port}", "NodePort", ("10.96.7.1",),
                       (ServicePortState("http", "TCP", 80, "8080", node_port=node_port),
                        ServicePortState("dns", "UDP", 53, "5353", node_port=node_port)))
    sl = EndpointSliceState("shop", f"web{node_port}-a", svc.name, "IPv4",
                            (EndpointPortState("http", "TCP", 8080), EndpointPortState("dns", "UDP", 5353)),
                            tuple(SliceEndpointState((ip,), node_name=NODE) for ip in endpoints))
    maps = desired_contents(service_table([svc], [sl], NODE, [NODE_IP]).values(), NODE, LbIds())
    dp.update_map("lb_backends", maps["lb_backends"])
    dp.update_map("lb_rev_nat", maps["lb_rev_nat"])
    dp.update_map("lb_members", maps["lb_members"])
    dp.update_map("lb_services", {**maps["lb_slots"], **maps["lb_masters"]})
    dp.update_map("lb_maglev", maps["lb_maglev"])


def _run(dp: Any, program: str, frame: Any) -> tuple[int, Any]:
    result = prog_test_run(dp.program_fd(program), bytes(frame), ingress_ifindex=1, ifindex=1)
    return result.retval, Ether(result.data_out)


def _checksums_valid(pkt: Any) -> bool:
    again = Ether(bytes(pkt))
    for layer in (IP, TCP, UDP, ICMP):
        if layer in again:
            del again[layer].chksum
    return bytes(Ether(bytes(again))) == bytes(pkt)


def test_a_nodeport_flow_is_translated_and_its_reply_reversed(datapath: Any) -> None:
    _write(datapath, (BACKEND,), 30080)
    syn = Ether(**MACS) / IP(src=CLIENT, dst=NODE_IP) / TCP(sport=40001, dport=30080, flags="S", seq=1000)
    verdict, out = _run(datapath, "from_netdev", syn)
    assert verdict == TC_ACT_OK
    assert (out[IP].src, out[IP].dst, out[TCP].sport, out[TCP].dport) == (CLIENT, BACKEND, 40001, 8080)
    assert _checksums_valid(out)
    # The same flow again: the NAT entry, the same backend.
    verdict, again = _run(datapath, "from_netdev", syn)
    assert verdict == TC_ACT_OK and again[IP].dst == BACKEND
    reply = Ether(**MACS) / IP(src=BACKEND, dst=CLIENT) / TCP(sport=8080, dport=40001, flags="SA", ack=1001)
    verdict, back = _run(datapath, "to_netdev", reply)
    assert verdict == TC_ACT_OK
    assert (back[IP].src, back[TCP].sport, back[IP].dst, back[TCP].dport) == (NODE_IP, 30080, CLIENT, 40001)
    assert _checksums_valid(back)
    # Something that is no frontend passes untouched.
    other = Ether(**MACS) / IP(src=CLIENT, dst=NODE_IP) / TCP(sport=40002, dport=22, flags="S")
    verdict, same = _run(datapath, "from_netdev", other)
    assert verdict == TC_ACT_OK and bytes(same) == bytes(other)


def test_no_backend_is_answered_with_rst_or_icmp(datapath: Any) -> None:
    _write(datapath, (), 30081)
    syn = Ether(**MACS) / IP(src=CLIENT, dst=NODE_IP) / TCP(sport=40003, dport=30081, flags="S", seq=5000,
                                                           options=[("MSS", 1460)])
    verdict, rst = _run(datapath, "from_netdev", syn)
    assert verdict == TC_ACT_REDIRECT  # back out of the device
    assert (rst[Ether].dst, rst[IP].src, rst[IP].dst) == (MACS["src"], NODE_IP, CLIENT)
    assert (rst[TCP].sport, rst[TCP].dport, str(rst[TCP].flags), rst[TCP].ack) == (30081, 40003, "RA", 5001)
    assert _checksums_valid(rst)
    datagram = Ether(**MACS) / IP(src=CLIENT, dst=NODE_IP) / UDP(sport=40004, dport=30081) / (b"q" * 100)
    verdict, icmp = _run(datapath, "from_netdev", datagram)
    assert verdict == TC_ACT_REDIRECT
    assert (icmp[IP].src, icmp[IP].dst, icmp[ICMP].type, icmp[ICMP].code) == (NODE_IP, CLIENT, 3, 3)
    quoted = IP(bytes(icmp[ICMP].payload))
    assert (quoted.src, quoted.dst, quoted[UDP].dport) == (CLIENT, NODE_IP, 30081)
    assert _checksums_valid(icmp)
