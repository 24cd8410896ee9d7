"""Struct layouts shared with the C datapath (mirrors of ``bpf/types.h``).

Each ctypes class mirrors one C struct field for field. ``check_struct``
compares a mirror with the class bcc generated from the compiled C source,
and ``check_map_info`` compares a map's kernel attributes with its spec, so
a drifted header or a stale pinned map fails loudly at load time instead of
being silently misread.
"""

from __future__ import annotations

import ctypes
import enum
from dataclasses import dataclass
from typing import Any, Final

from membrane.prefilter_rules import MAX_REFS, MAX_RULES, PAYLOAD_MAX


class LayoutMismatch(RuntimeError):
    """The Python mirrors disagree with the compiled program or a pinned map."""


class Direction(enum.IntEnum):
    """From the pod's point of view (``enum mb_direction``)."""

    INGRESS = 0  # towards a pod
    EGRESS = 1  # from a pod


class Reason(enum.IntEnum):
    """Verdict reasons counted in the metrics map (``enum mb_reason``)."""

    FORWARDED = 0
    DROP_SPOOFED_IP = 1
    DROP_SPOOFED_MAC = 2
    DROP_UNSUPPORTED_L3 = 3
    DROP_INVALID_PACKET = 4
    DROP_CT_CREATE_FAILED = 5
    DROP_NO_ENDPOINT = 6
    DROP_POLICY_INGRESS = 7
    DROP_POLICY_EGRESS = 8
    DROP_NO_ROUTE = 9  # tunnelled destination but no tunnel device configured
    DROP_TUNNEL_KEY = 10  # tunnel metadata could not be set (sender) / missing or VNI 0 (receiver)
    DROP_POD_TO_TUNNEL_PORT = 11  # a pod sent UDP to the tunnel port of something that is no pod
    DROP_UNKNOWN_TUNNEL_PEER = 12  # VXLAN from an address the ipcache does not know as a node
    DROP_TUNNEL_SOURCE_NOT_OWNED = 13  # inner source is neither the sending node nor one of its pods
    DROP_NO_SERVICE_BACKEND = 14  # a service frontend without a usable backend: connection refused
    DROP_PREFILTER_RULE = 15  # XDP prefilter: a drop rule matched (the event's rule_ref names it)
    DROP_PREFILTER_DENY = 16  # XDP prefilter: source in a CIDR deny list (rule_ref names the list)
    DROP_PREFILTER_RATE = 17  # XDP prefilter: over a ratelimit rule's rate for its source


class EndpointFlag(enum.IntFlag):
    """``mb_endpoint_info.flags``."""

    HOST = 0x1  # reserved: the node itself


class IpcacheFlag(enum.IntFlag):
    """``mb_ipcache_value.flags`` (``MB_IPCACHE_F_*``)."""

    NODE = 0x1  # a node's underlay address: VXLAN is accepted from it


class CtFlag(enum.IntFlag):
    """``mb_ct_entry.flags``."""

    SEEN_REPLY = 0x1
    TX_CLOSING = 0x2
    RX_CLOSING = 0x4
    POLICY_EGRESS = 0x8  # the initiator's egress policy allowed the flow
    POLICY_INGRESS = 0x10  # the responder's ingress policy allowed the flow
    DENIED_EGRESS = 0x20  # judged again after a policy change: denied, every packet dropped
    DENIED_INGRESS = 0x40
    VIA_STACK = 0x80  # came out of the node's stack (netfilter may have translated it): never redirected


MacBytes = ctypes.c_uint8 * 6


class EndpointKey(ctypes.Structure):
    _fields_ = [("ip4", ctypes.c_uint32)]  # network byte order in memory


class EndpointInfo(ctypes.Structure):
    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("sec_identity", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("pod_mac", MacBytes),
        ("host_mac", MacBytes),
    ]


class CtTuple4(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("nexthdr", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class CtEntry(ctypes.Structure):
    _fields_ = [
        ("created_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("tx_packets", ctypes.c_uint64),
        ("tx_bytes", ctypes.c_uint64),
        ("rx_packets", ctypes.c_uint64),
        ("rx_bytes", ctypes.c_uint64),
        ("lifetime_s", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),
        ("tx_tcp_flags", ctypes.c_uint8),
        ("rx_tcp_flags", ctypes.c_uint8),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("policy_rev", ctypes.c_uint32),  # the policy revision the flow was last judged under
        ("pad", ctypes.c_uint32),
    ]


class MetricsKey(ctypes.Structure):
    _fields_ = [
        ("reason", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class MetricsValue(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class IpcacheKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ip4", ctypes.c_uint32)]  # ip4 in network order


class IpcacheValue(ctypes.Structure):
    _fields_ = [
        ("sec_identity", ctypes.c_uint32),
        ("tunnel_endpoint", ctypes.c_uint32),  # network byte order
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class CidrKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ip4", ctypes.c_uint32)]  # ip4 in network order


class CidrValue(ctypes.Structure):
    _fields_ = [("sec_identity", ctypes.c_uint32)]


class NodeConfigValue(ctypes.Structure):
    _fields_ = [
        ("tunnel_ifindex", ctypes.c_uint32),
        ("node_ip", ctypes.c_uint32),  # network byte order
        ("flags", ctypes.c_uint32),
        ("tunnel_port", ctypes.c_uint16),  # network byte order
        ("pad", ctypes.c_uint16),
    ]


class PolicyKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("dport", ctypes.c_uint16),  # network byte order
    ]


class PolicyValue(ctypes.Structure):
    _fields_ = [("verdict", ctypes.c_uint8), ("pad", ctypes.c_uint8 * 3), ("rule_ref", ctypes.c_uint32)]


class PolicyVerdict(enum.IntEnum):
    """``enum mb_policy_verdict``; same numbers as ``membrane.policy.entries.Verdict``."""

    NONE = 0
    ALLOW = 1
    DENY = 2


class EventType(enum.IntEnum):
    """``enum mb_event_type``."""

    DROP = 1
    POLICY_VERDICT = 2
    TRACE_NEW = 3
    TRACE_END = 4
    TRANSLATION = 5


class EventVerdict(enum.IntEnum):
    """``mb_flow_event.verdict``."""

    FORWARDED = 0
    DROPPED = 1


class FlowPath(enum.IntEnum):
    """``mb_flow_event.path`` (``MB_PATH_*``): how a new flow crosses the node (0: not said)."""

    REDIRECT = 1  # straight into the destination pod, around the node's stack
    STACK = 2  # through the node's stack (netfilter may translate it: kube-proxy, hostPorts)
    TUNNEL = 3  # straight into the VXLAN tunnel


class FlowEvent(ctypes.Structure):
    """One ring buffer record (``struct mb_flow_event``); addresses and ports in network order."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("nexthdr", ctypes.c_uint8),
        ("type", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("verdict", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("is_reply", ctypes.c_uint8),
        ("path", ctypes.c_uint8),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint16),
        ("pad2", ctypes.c_uint16),
        ("rule_ref", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
        ("count", ctypes.c_uint32),
        ("netns_cookie", ctypes.c_uint64),  # TRANSLATION events: the client's network namespace
    ]


class EventConfigFlag(enum.IntFlag):
    """``mb_event_config.flags``."""

    DISABLED = 0x1


class EventConfigValue(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("rate_per_sec", ctypes.c_uint32),
        ("burst", ctypes.c_uint32),
        ("aggregate_ms", ctypes.c_uint32),
    ]


class EventStatsValue(ctypes.Structure):
    _fields_ = [
        ("emitted", ctypes.c_uint64),
        ("rate_limited", ctypes.c_uint64),
        ("ringbuf_full", ctypes.c_uint64),
        ("aggregated", ctypes.c_uint64),
    ]


class PolicyRevValue(ctypes.Structure):
    """``struct mb_policy_rev``: bumped after every policy change lands (re-judges older flows)."""

    _fields_ = [("revision", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


# --- load balancing (types.h "load balancing"; lib/lb.h) ---------------------------------------

class LbScope(enum.IntEnum):
    """``mb_lb4_key.scope`` (``MB_LB_SCOPE_*``)."""

    EXTERNAL = 0  # the frontend's backends (the only set unless TWO_SCOPES)
    INTERNAL = 1  # this node's own traffic, when its backends differ


class LbFlag(enum.IntFlag):
    """``mb_lb4_service.flags`` of a master entry (``MB_LB_F_*``)."""

    CLUSTER_IP = 0x1
    NODE_PORT = 0x2  # per-packet path only
    EXTERNAL_IP = 0x4
    LOAD_BALANCER = 0x8
    AFFINITY = 0x10  # sessionAffinity ClientIP
    TWO_SCOPES = 0x20
    LOCAL_ONLY = 0x40
    TERMINATING = 0x80  # no ready endpoint: serving-terminating backends


class LbBackendFlag(enum.IntFlag):
    """``mb_lb4_backend.flags`` (``MB_LB_BACKEND_F_*``)."""

    TERMINATING = 0x1
    LOCAL = 0x2


class LbClient(enum.IntEnum):
    """``mb_lb4_affinity_key.client_kind`` (``MB_LB_CLIENT_*``)."""

    NETNS = 0
    IP = 1
    SOCKET = 2


class LbStat(enum.IntEnum):
    """Index of ``mb_lb_stats_v1`` (``enum mb_lb_stat``)."""

    TRANSLATED = 0
    REFUSED = 1
    REVERSED = 2
    AFFINITY_HIT = 3
    FAILED = 4


class Lb4Key(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),  # network byte order
        ("dport", ctypes.c_uint16),  # network byte order
        ("slot", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("scope", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class Lb4Service(ctypes.Structure):
    _fields_ = [
        ("backend_id", ctypes.c_uint32),
        ("affinity_timeout_s", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("rev_nat_index", ctypes.c_uint16),
        ("flags", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class Lb4BackendKey(ctypes.Structure):
    _fields_ = [("backend_id", ctypes.c_uint32)]


class Lb4Backend(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),  # network byte order
        ("port", ctypes.c_uint16),  # network byte order
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
    ]


class Lb4RevNatKey(ctypes.Structure):
    _fields_ = [("rev_nat_index", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class Lb4RevNat(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),  # network byte order
        ("port", ctypes.c_uint16),  # network byte order
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class Lb4MemberKey(ctypes.Structure):
    _fields_ = [("backend_id", ctypes.c_uint32), ("rev_nat_index", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class Lb4Member(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class Lb4AffinityKey(ctypes.Structure):
    _fields_ = [
        ("client", ctypes.c_uint64),
        ("rev_nat_index", ctypes.c_uint16),
        ("client_kind", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 5),
    ]


class Lb4Affinity(ctypes.Structure):
    _fields_ = [("last_used_ns", ctypes.c_uint64), ("backend_id", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class Lb4SockKey(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("address", ctypes.c_uint32),  # network byte order
        ("port", ctypes.c_uint16),  # network byte order
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class Lb4SockValue(ctypes.Structure):
    _fields_ = [
        ("address", ctypes.c_uint32),  # network byte order
        ("port", ctypes.c_uint16),  # network byte order
        ("rev_nat_index", ctypes.c_uint16),
    ]


class LbNatDir(enum.IntEnum):
    """``mb_lb4_nat_key.dir`` (``MB_LB_NAT_*``)."""

    FORWARD = 0
    REPLY = 1


class LbNatFlag(enum.IntFlag):
    """``mb_lb4_nat.flags`` (``MB_LB_NAT_F_*``)."""

    SNAT = 0x1


class Lb4MaglevKey(ctypes.Structure):
    _fields_ = [("rev_nat_index", ctypes.c_uint16), ("pad", ctypes.c_uint16), ("index", ctypes.c_uint32)]


class Lb4Maglev(ctypes.Structure):
    _fields_ = [("backend_id", ctypes.c_uint32)]


class Lb4NatKey(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint32),  # network byte order
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
    ]


class Lb4Nat(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint32),  # network byte order
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("backend_id", ctypes.c_uint32),
        ("rev_nat_index", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class LbStatsValue(ctypes.Structure):
    _fields_ = [("count", ctypes.c_uint64)]


PAYLOAD_BYTES = ctypes.c_uint8 * PAYLOAD_MAX


class PrefilterRuleValue(ctypes.Structure):
    """``struct mb_prefilter_rule`` (fields as ``membrane.prefilter_rules.EncodedRule``)."""

    _fields_ = [
        ("rule_ref", ctypes.c_uint32),
        ("action", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("facts_mask", ctypes.c_uint32),
        ("facts_value", ctypes.c_uint32),
        ("saddr", ctypes.c_uint32),  # network byte order, as the masks
        ("smask", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("dmask", ctypes.c_uint32),
        ("ihl_min", ctypes.c_uint8),
        ("ihl_max", ctypes.c_uint8),
        ("ttl_min", ctypes.c_uint8),
        ("ttl_max", ctypes.c_uint8),
        ("tot_len_min", ctypes.c_uint16),
        ("tot_len_max", ctypes.c_uint16),
        ("frag_off_min", ctypes.c_uint16),
        ("frag_off_max", ctypes.c_uint16),
        ("sport_min", ctypes.c_uint16),
        ("sport_max", ctypes.c_uint16),
        ("dport_min", ctypes.c_uint16),
        ("dport_max", ctypes.c_uint16),
        ("tcp_flags_mask", ctypes.c_uint8),
        ("tcp_flags_value", ctypes.c_uint8),
        ("tcp_doff_min", ctypes.c_uint8),
        ("tcp_doff_max", ctypes.c_uint8),
        ("payload_offset", ctypes.c_uint16),
        ("payload_base", ctypes.c_uint8),
        ("payload_len", ctypes.c_uint8),
        ("rate_pps", ctypes.c_uint32),
        ("rate_burst", ctypes.c_uint32),
        ("payload_value", PAYLOAD_BYTES),
        ("payload_mask", PAYLOAD_BYTES),
    ]


class PrefilterConfigValue(ctypes.Structure):
    """``struct mb_prefilter_config``: the bank in force and its rule count in one word."""

    _fields_ = [("active", ctypes.c_uint32), ("generation", ctypes.c_uint32)]


class PrefilterCounterValue(ctypes.Structure):
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("dropped_packets", ctypes.c_uint64),
        ("dropped_bytes", ctypes.c_uint64),
    ]


class PrefilterCidrKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("ip4", ctypes.c_uint32)]  # ip4 in network order


class PrefilterCidrValue(ctypes.Structure):
    _fields_ = [("rule_ref", ctypes.c_uint32)]


class PrefilterRateKey(ctypes.Structure):
    _fields_ = [("rule_ref", ctypes.c_uint32), ("saddr", ctypes.c_uint32)]  # saddr in network order


class PrefilterRateValue(ctypes.Structure):
    _fields_ = [("last_ns", ctypes.c_uint64), ("nano_tokens", ctypes.c_uint64)]


PREFILTER_ACTIVE_BANK: Final = 0x80000000  # MB_PF_ACTIVE_BANK
PREFILTER_ACTIVE_COUNT: Final = 0xFFFF  # MB_PF_ACTIVE_COUNT


class ArrayIndex(ctypes.Structure):
    """The ``__u32`` key of array maps, as a struct so it is checked like the others."""

    _fields_ = [("index", ctypes.c_uint32)]


# Kernel map type numbers (enum bpf_map_type in uapi/linux/bpf.h).
BPF_MAP_TYPE_HASH: Final = 1
BPF_MAP_TYPE_ARRAY: Final = 2
BPF_MAP_TYPE_PERCPU_HASH: Final = 5
BPF_MAP_TYPE_PERCPU_ARRAY: Final = 6
BPF_MAP_TYPE_LRU_HASH: Final = 9
BPF_MAP_TYPE_LPM_TRIE: Final = 11
BPF_MAP_TYPE_RINGBUF: Final = 27

BPF_F_NO_PREALLOC: Final = 0x1


@dataclass(frozen=True)
class MapSpec:
    """What a map must look like, in C (maps.h) and in the kernel."""

    role: str
    name: str  # carries the layout version
    map_type: int
    key: type[ctypes.Structure]
    value: type[ctypes.Structure]
    max_entries: int
    map_flags: int = 0


ENDPOINTS: Final = MapSpec("endpoints", "mb_endpoints_v1", BPF_MAP_TYPE_HASH, EndpointKey, EndpointInfo, 4096)
# v2: entries carry the policy revision they were judged under (v1 is removed at load: an
# upgrade starts with an empty conntrack table, once).
CONNTRACK: Final = MapSpec("conntrack", "mb_ct4_v2", BPF_MAP_TYPE_LRU_HASH, CtTuple4, CtEntry, 65536)
METRICS: Final = MapSpec("metrics", "mb_metrics_v1", BPF_MAP_TYPE_PERCPU_HASH, MetricsKey, MetricsValue, 1024)
IPCACHE: Final = MapSpec(
    "ipcache", "mb_ipcache_v1", BPF_MAP_TYPE_LPM_TRIE, IpcacheKey, IpcacheValue, 65536, BPF_F_NO_PREALLOC
)
POLICY: Final = MapSpec(
    "policy", "mb_policy_v1", BPF_MAP_TYPE_LPM_TRIE, PolicyKey, PolicyValue, 65536, BPF_F_NO_PREALLOC
)
# ipBlock prefix -> CIDR identity (the CIDR identity of a peer address, pods included).
CIDR: Final = MapSpec("cidr", "mb_cidr_v1", BPF_MAP_TYPE_LPM_TRIE, CidrKey, CidrValue, 16384, BPF_F_NO_PREALLOC)
EVENT_STATS: Final = MapSpec(
    "event_stats", "mb_event_stats_v1", BPF_MAP_TYPE_PERCPU_ARRAY, ArrayIndex, EventStatsValue, 1
)
EVENT_CONFIG: Final = MapSpec(
    "event_config", "mb_event_config_v1", BPF_MAP_TYPE_ARRAY, ArrayIndex, EventConfigValue, 1
)
NODE_CONFIG: Final = MapSpec(
    "node_config", "mb_node_config_v1", BPF_MAP_TYPE_ARRAY, ArrayIndex, NodeConfigValue, 1
)
POLICY_REV: Final = MapSpec("policy_rev", "mb_policy_rev_v1", BPF_MAP_TYPE_ARRAY, ArrayIndex, PolicyRevValue, 1)
# Services (lib/lb.h): written by the LB manager, read by the socket hooks (and the per-packet path).
LB_SERVICES: Final = MapSpec("lb_services", "mb_lb4_services_v1", BPF_MAP_TYPE_HASH, Lb4Key, Lb4Service, 65536)
LB_BACKENDS: Final = MapSpec("lb_backends", "mb_lb4_backends_v1", BPF_MAP_TYPE_HASH, Lb4BackendKey, Lb4Backend,
                             65536)
LB_REV_NAT: Final = MapSpec("lb_rev_nat", "mb_lb4_rev_nat_v1", BPF_MAP_TYPE_HASH, Lb4RevNatKey, Lb4RevNat, 65536)
LB_MEMBERS: Final = MapSpec("lb_members", "mb_lb4_members_v1", BPF_MAP_TYPE_HASH, Lb4MemberKey, Lb4Member, 65536)
LB_AFFINITY: Final = MapSpec("lb_affinity", "mb_lb4_affinity_v1", BPF_MAP_TYPE_LRU_HASH, Lb4AffinityKey,
                             Lb4Affinity, 65536)
LB_SOCK: Final = MapSpec("lb_sock", "mb_lb4_sock_v1", BPF_MAP_TYPE_LRU_HASH, Lb4SockKey, Lb4SockValue, 131072)
# The per-packet path (bpf_host.c, lib/nodeport.h): Maglev tables of per-packet frontends, written by
# the LB manager; NAT entries of translated flows, written by the datapath (LRU).
LB_MAGLEV: Final = MapSpec("lb_maglev", "mb_lb4_maglev_v1", BPF_MAP_TYPE_HASH, Lb4MaglevKey, Lb4Maglev, 262144)
LB_NAT: Final = MapSpec("lb_nat", "mb_lb4_nat_v1", BPF_MAP_TYPE_LRU_HASH, Lb4NatKey, Lb4Nat, 131072)
LB_STATS: Final = MapSpec("lb_stats", "mb_lb_stats_v1", BPF_MAP_TYPE_PERCPU_ARRAY, ArrayIndex, LbStatsValue,
                          len(LbStat))
# XDP prefilter (bpf_xdp.c): two banks of rules, the word saying which is in force, counters per rule or
# deny list, the deny lists' prefixes, the ratelimit buckets.
PREFILTER_RULES: Final = MapSpec("prefilter_rules", "mb_prefilter_rules_v1", BPF_MAP_TYPE_ARRAY, ArrayIndex,
                                 PrefilterRuleValue, 2 * MAX_RULES)
PREFILTER_CONFIG: Final = MapSpec("prefilter_config", "mb_prefilter_config_v1", BPF_MAP_TYPE_ARRAY, ArrayIndex,
                                  PrefilterConfigValue, 1)
PREFILTER_COUNTERS: Final = MapSpec("prefilter_counters", "mb_prefilter_counters_v1", BPF_MAP_TYPE_PERCPU_ARRAY,
                                    ArrayIndex, PrefilterCounterValue, MAX_REFS)
PREFILTER_CIDR: Final = MapSpec("prefilter_cidr", "mb_prefilter_cidr_v1", BPF_MAP_TYPE_LPM_TRIE, PrefilterCidrKey,
                                PrefilterCidrValue, 131072, BPF_F_NO_PREALLOC)
PREFILTER_RATE: Final = MapSpec("prefilter_rate", "mb_prefilter_rate_v1", BPF_MAP_TYPE_LRU_HASH, PrefilterRateKey,
                                PrefilterRateValue, 16384)
MAP_SPECS: Final = (ENDPOINTS, CONNTRACK, METRICS, IPCACHE, POLICY, EVENT_STATS, EVENT_CONFIG, NODE_CONFIG, CIDR,
                    POLICY_REV, LB_SERVICES, LB_BACKENDS, LB_REV_NAT, LB_MEMBERS, LB_AFFINITY, LB_SOCK, LB_STATS,
                    LB_MAGLEV, LB_NAT,
                    PREFILTER_RULES, PREFILTER_CONFIG, PREFILTER_COUNTERS, PREFILTER_CIDR, PREFILTER_RATE)
# Pins of older layout versions, removed at load (their programs are replaced by this build's).
RETIRED_PINS: Final = ("mb_ct4_v1",)
# Maps whose size comes from the agent's configuration: their whole content is rebuilt from
# the agent's state at every start, so a pin of another size is replaced (resized) at load.
RESIZABLE: Final = ("policy", "ipcache", "cidr", "prefilter_cidr")


@dataclass(frozen=True)
class RingSpec:
    """A ring buffer map: no key or value, max_entries is its size in bytes."""

    role: str
    name: str
    size_bytes: int  # a power of two, multiple of the page size
    record: type[ctypes.Structure]
    layout_witness: str  # a map whose value bcc types as the record (the per-CPU scratch event, maps.h)


EVENTS: Final = RingSpec("events", "mb_events_v1", 64 * 4096, FlowEvent, "mb_event_scratch")
PINNED_NAMES: Final = (*(spec.name for spec in MAP_SPECS), EVENTS.name)


def _describe(cls: type[ctypes.Structure]) -> list[tuple[str, int, int]]:
    """(name, offset, size) of every field, in declaration order."""
    return [
        (name, getattr(cls, name).offset, getattr(cls, name).size)
        for name, *_ in cls._fields_
    ]


def check_struct(mirror: type[ctypes.Structure], compiled: type[Any], what: str) -> None:
    # `compiled` is bcc's type: a Structure, or a plain ctypes integer for a scalar key.
    """Raise LayoutMismatch unless both classes have the same fields, offsets and sizes."""
    if not issubclass(compiled, ctypes.Structure):
        # bcc types a scalar key (array maps) as a plain ctypes integer.
        if ctypes.sizeof(mirror) != ctypes.sizeof(compiled) or len(mirror._fields_) != 1:
            raise LayoutMismatch(f"{what}: {mirror.__name__} does not match the scalar {compiled.__name__} of bpf/types.h")
        return
    ours, theirs = _describe(mirror), _describe(compiled)
    problems: list[str] = []
    if ctypes.sizeof(mirror) != ctypes.sizeof(compiled):
        problems.append(f"size {ctypes.sizeof(mirror)} (python) != {ctypes.sizeof(compiled)} (C)")
    if ours != theirs:
        by_name = {name: (offset, size) for name, offset, size in theirs}
        for name, offset, size in ours:
            if name not in by_name:
                problems.append(f"field {name!r} missing in C")
            elif by_name[name] != (offset, size):
                c_offset, c_size = by_name[name]
                problems.append(
                    f"field {name!r} at offset {offset} size {size} (python) "
                    f"vs offset {c_offset} size {c_size} (C)"
                )
        extra = sorted(set(by_name) - {name for name, _, _ in ours})
        if extra:
            problems.append(f"fields only in C: {extra}")
        if not problems:
            problems.append("field order differs")
    if problems:
        raise LayoutMismatch(
            f"{what}: {mirror.__name__} does not match bpf/types.h: " + "; ".join(problems)
        )


@dataclass(frozen=True)
class MapInfo:
    """The kernel's view of a map (subset of struct bpf_map_info)."""

    map_type: int
    map_id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int = 0


def check_map_info(spec: MapSpec | RingSpec, info: MapInfo, where: str) -> None:
    """Raise LayoutMismatch if the kernel map (possibly an old pin) is not what spec says."""
    if isinstance(spec, RingSpec):
        expected = (BPF_MAP_TYPE_RINGBUF, 0, 0, spec.size_bytes, 0)
    else:
        expected = (
            spec.map_type, ctypes.sizeof(spec.key), ctypes.sizeof(spec.value), spec.max_entries, spec.map_flags
        )
    actual = (info.map_type, info.key_size, info.value_size, info.max_entries, info.map_flags)
    if expected != actual:
        raise LayoutMismatch(
            f"map {spec.name} at {where} is (type, key_size, value_size, max_entries, flags)={actual}, "
            f"expected {expected}. A pinned map from an incompatible build: bump the layout "
            f"version in its name (maps.h, layout.py) or remove the stale pin."
        )
