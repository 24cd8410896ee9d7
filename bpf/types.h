/* SPDX-License-Identifier: Apache-2.0 */
/*
 * types.h: every struct and enum shared between the datapath and Python.
 *
 * Rules (the Python mirrors in agent/datapath/layout.py are checked against
 * the compiled program at every load, so breaking them fails loudly):
 *   - fixed-width types only, explicit padding, no implicit holes;
 *   - changing a map's key or value layout means bumping the version suffix
 *     of that map's name in maps.h (and in layout.py): the new program then
 *     gets a fresh pinned map instead of misreading the old one.
 */
#ifndef MB_TYPES_H
#define MB_TYPES_H

/* Direction, always from the pod's point of view. */
enum mb_direction {
	MB_DIR_INGRESS = 0, /* towards a pod */
	MB_DIR_EGRESS = 1,  /* from a pod */
};

/* Verdict reasons counted in the metrics map (fits in a u8). */
enum mb_reason {
	MB_FORWARDED = 0,            /* accepted: redirected to a pod or passed to the stack */
	MB_DROP_SPOOFED_IP = 1,      /* source IP (or ARP sender IP) is not the endpoint's */
	MB_DROP_SPOOFED_MAC = 2,     /* source MAC (or ARP sender MAC) is not the endpoint's */
	MB_DROP_UNSUPPORTED_L3 = 3,  /* neither IPv4 nor ARP (IPv6 included, for now) */
	MB_DROP_INVALID_PACKET = 4,  /* truncated or malformed headers */
	MB_DROP_CT_CREATE_FAILED = 5,/* conntrack entry could not be created (map full) */
	MB_DROP_NO_ENDPOINT = 6,     /* to_container: destination is not this veth's endpoint */
	/* Numbers are stable (Python and dashboards know them). */
	MB_DROP_POLICY_INGRESS = 7,
	MB_DROP_POLICY_EGRESS = 8,
	MB_DROP_NO_ROUTE = 9,        /* tunnelled destination but no tunnel device configured */
	MB_DROP_TUNNEL_KEY = 10,     /* tunnel metadata could not be set (sender) or is missing, VNI 0 (receiver) */
	MB_DROP_POD_TO_TUNNEL_PORT = 11,  /* a pod sent UDP to the tunnel port of something that is no pod */
	MB_DROP_UNKNOWN_TUNNEL_PEER = 12, /* VXLAN from an address the ipcache does not know as a node */
	MB_DROP_TUNNEL_SOURCE_NOT_OWNED = 13, /* inner source is neither the sending node nor one of its pods */
	MB_DROP_NO_SERVICE_BACKEND = 14, /* a service frontend without a usable backend: connection refused */
	MB_DROP_PREFILTER_RULE = 15,    /* XDP prefilter: a drop rule matched (rule_ref names it) */
	MB_DROP_PREFILTER_DENY = 16,  /* XDP prefilter: source in a CIDR deny list (rule_ref names the list) */
	MB_DROP_PREFILTER_RATE = 17,  /* XDP prefilter: over a ratelimit rule's rate for its source */
	MB_REASON_MAX,
};

/* ---- endpoints: IPv4 pod address -> local endpoint facts ---------------- */

struct mb_endpoint_key {
	__be32 ip4;
};

/* mb_endpoint_info.flags */
#define MB_ENDPOINT_F_HOST 0x1 /* reserved: the node itself, never redirected to */

struct mb_endpoint_info {
	__u32 ifindex;      /* host-side veth ifindex, in the node netns */
	__u32 sec_identity; /* security identity of the pod (24 bits used) */
	__u16 endpoint_id;
	__u16 flags;        /* MB_ENDPOINT_F_* */
	__u8 pod_mac[6];    /* MAC of eth0 inside the pod */
	__u8 host_mac[6];   /* MAC of the host-side veth */
};

/* ---- conntrack: IPv4 5-tuple of the packet that opened the flow ---------- */

/*
 * Ports are in network byte order. For ICMP echo the identifier stands in
 * for a port: the request uses sport = id, dport = 0, so the reply
 * (sport = 0, dport = id) reversed matches the request's tuple.
 */
struct mb_ct_tuple4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 nexthdr; /* MB_IPPROTO_TCP, _UDP, _ICMP (lib/l4.h) */
	__u8 pad[3];
};

/* mb_ct_entry.flags */
#define MB_CT_F_SEEN_REPLY 0x1 /* a packet went the reply way */
#define MB_CT_F_TX_CLOSING 0x2 /* FIN or RST seen from the initiator */
#define MB_CT_F_RX_CLOSING 0x4 /* FIN or RST seen from the responder */
#define MB_CT_F_POLICY_EGRESS 0x8   /* egress policy of the initiator allowed the flow */
#define MB_CT_F_POLICY_INGRESS 0x10 /* ingress policy of the responder allowed the flow */
/* Judged again after a policy change and denied: every packet of the flow, either way, is
 * dropped until the policy changes again. The entry is kept (not deleted) so that a later
 * packet of the responder cannot open the flow anew in the other orientation. */
#define MB_CT_F_DENIED_EGRESS 0x20
#define MB_CT_F_DENIED_INGRESS 0x40
/* The original direction came out of the node's stack (to_container): netfilter may have
 * translated it (kube-proxy's Service DNAT, a portmap hostPort), so every packet of the flow
 * goes back through the stack, which alone can reverse the translation. Flows the eBPF path set
 * up itself (pod to pod) keep the redirect shortcut. */
#define MB_CT_F_VIA_STACK 0x80

/* "tx" is the original direction (initiator -> responder), "rx" the reply. */
struct mb_ct_entry {
	__u64 created_ns;   /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 last_seen_ns;
	__u64 tx_packets;
	__u64 tx_bytes;
	__u64 rx_packets;
	__u64 rx_bytes;
	__u32 lifetime_s;   /* idle timeout for the current state, chosen by the datapath */
	__u16 flags;        /* MB_CT_F_* */
	__u8 tx_tcp_flags;  /* union of TCP flags seen each way, for debugging */
	__u8 rx_tcp_flags;
	__u32 src_identity; /* identity of the initiator (0 = unknown) */
	__u32 dst_identity; /* identity of the responder (0 = unknown, e.g. entry of an older build) */
	__u32 policy_rev;   /* mb_policy_rev_v1 when the flow was last judged (lib/flow.h re-judges older ones) */
	__u32 pad;
};

/* ---- policy revision: array, one entry, bumped by the agent ------------- */

/*
 * Bumped by the agent after every policy change has landed in the maps
 * (policy, ipcache, CIDR, endpoint identities). A conntrack entry judged
 * under another revision is judged again on its next packet, so an
 * established flow never keeps a verdict the current policy would not give.
 */
struct mb_policy_rev {
	__u32 revision;
	__u32 pad;
};

/* ---- metrics: per-CPU counters per (reason, direction) ------------------- */

struct mb_metrics_key {
	__u8 reason;    /* enum mb_reason */
	__u8 direction; /* enum mb_direction */
	__u8 pad[2];
};

struct mb_metrics_value {
	__u64 packets;
	__u64 bytes;
};

/* ---- ipcache: LPM trie, IPv4 prefix -> security identity ---------------- */

/* A miss means MB_IDENTITY_WORLD. */
struct mb_ipcache_key {
	__u32 prefixlen; /* LPM trie: significant bits of ip4 */
	__be32 ip4;
};

/* mb_ipcache_value.flags */
#define MB_IPCACHE_F_NODE 0x1 /* the /32 of a node's underlay address: VXLAN is accepted from it */

/*
 * tunnel_endpoint also says who owns the address: the overlay takes a VNI's
 * identity only for inner sources whose entry names the sending node (its
 * pods and its pod CIDR), or for the sending node's own address.
 */
struct mb_ipcache_value {
	__u32 sec_identity;
	__be32 tunnel_endpoint; /* node hosting the address (0 = this node / not tunnelled) */
	__u8 flags;             /* MB_IPCACHE_F_* */
	__u8 pad[3];
};

/* Reserved identities the datapath itself needs (membrane/identities.py). */
#define MB_IDENTITY_ANY 0   /* policy key wildcard: any peer */
#define MB_IDENTITY_HOST 1
#define MB_IDENTITY_WORLD 2
#define MB_IDENTITY_REMOTE_NODE 6 /* the VNI of a node's own packets (to_overlay) */
/* Node-local identities (CIDR identities of ipBlock prefixes) have bit 24 set. */
#define MB_IDENTITY_LOCAL_FLAG (1U << 24)

/* ---- cidr: LPM trie, IPv4 prefix -> CIDR identity (ipBlock prefixes) ----- */

/*
 * Only the prefixes of ipBlocks (every cidr and every except), each with its
 * CIDR identity (membrane/policy/cidrs.py). An address's CIDR identity is its
 * longest prefix here, else WORLD; pod addresses have one too, which is how an
 * ipBlock selects pods (the ipcache's /32 gives their pod identity). The
 * ipcache holds these prefixes as well, so for an address that is no pod or
 * node, its ipcache identity already is its CIDR identity.
 */
struct mb_cidr_key {
	__u32 prefixlen; /* LPM trie: significant bits of ip4 */
	__be32 ip4;
};

struct mb_cidr_value {
	__u32 sec_identity; /* a node-local CIDR identity (MB_IDENTITY_LOCAL_FLAG set) */
};

/* ---- node config: array, one entry, written by the agent ---------------- */

/*
 * What the datapath needs to know about its node. All zero (a fresh map)
 * means "no tunnel": tunnelled destinations are then dropped (NO_ROUTE)
 * rather than leaked unencapsulated to the underlay. tunnel_port took the
 * place of padding that was always zero (and zero means "no port"), so a
 * pin of the older layout reads correctly: no version bump.
 */
struct mb_node_config {
	__u32 tunnel_ifindex; /* VXLAN device in external (collect-md) mode, 0 = none */
	__be32 node_ip;       /* this node's underlay address (informational) */
	__u32 flags;          /* reserved */
	__be16 tunnel_port;   /* UDP port of the overlay: pods may not send to it (0 = no tunnel, no check) */
	__u16 pad;
};

/* VNIs are 24 bits: the source security identity travels in them. */
#define MB_VNI_MASK 0xffffff

/* ---- policy: LPM trie, (endpoint, peer, direction, protocol, port) ------- */

/*
 * Layout and semantics are the contract of membrane/policy/flattening.py:
 * endpoint_id, identity, direction always match fully (72 bits); protocol
 * (8 bits) unless the entry is protocol ANY (prefixlen 72); then the leading
 * bits of the big-endian port (port ranges are stored as aligned blocks).
 */
struct mb_policy_key {
	__u32 prefixlen;
	__u32 endpoint_id;
	__u32 identity;  /* peer identity, MB_IDENTITY_ANY = any peer */
	__u8 direction;  /* enum mb_direction */
	__u8 protocol;   /* IP protocol number, 0 = any (no port) */
	__be16 dport;
};

/* mb_policy_value.verdict (membrane.policy.entries.Verdict) */
enum mb_policy_verdict {
	MB_POLICY_NONE = 0,  /* no entry: drop */
	MB_POLICY_ALLOW = 1,
	MB_POLICY_DENY = 2,
};

struct mb_policy_value {
	__u8 verdict;    /* enum mb_policy_verdict */
	__u8 pad[3];
	__u32 rule_ref;  /* index into the agent's RuleTable, carried in flow events */
};

/* ---- flow events: ring buffer records (agent decodes them into Flows) ---- */

enum mb_event_type {
	MB_EVENT_DROP = 1,           /* a packet was dropped; reason says why */
	MB_EVENT_POLICY_VERDICT = 2, /* first packet of a connection judged by policy */
	MB_EVENT_TRACE_NEW = 3,      /* a new connection was forwarded */
	MB_EVENT_TRACE_END = 4,      /* a connection closed (FIN/RST seen both ways or RST) */
	MB_EVENT_TRANSLATION = 5,    /* service address translated (services issue) */
};

/* mb_flow_event.path: the way the datapath forwards a new flow (the field was padding, always 0) */
#define MB_PATH_REDIRECT 1 /* straight into the destination pod, around the node's stack (pod to pod) */
#define MB_PATH_STACK 2    /* through the node's stack, where netfilter may translate it (kube-proxy, hostPorts) */
#define MB_PATH_TUNNEL 3   /* straight into the VXLAN tunnel (pod to a pod of another node) */

/* mb_flow_event.verdict */
#define MB_VERDICT_FORWARDED 0
#define MB_VERDICT_DROPPED 1

struct mb_flow_event {
	__u64 ts_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__be32 saddr;
	__be32 daddr;
	__be16 sport;       /* ICMP echo: identifier */
	__be16 dport;
	__u8 nexthdr;
	__u8 type;          /* enum mb_event_type */
	__u8 reason;        /* enum mb_reason */
	__u8 direction;     /* enum mb_direction, from the pod's point of view */
	__u8 verdict;       /* MB_VERDICT_* */
	__u8 tcp_flags;     /* flags of this packet (FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10) */
	__u8 is_reply;      /* 1 when the packet goes the reply way of its connection */
	__u8 path;          /* MB_PATH_*: how a new flow crosses this node (0 in other events) */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;      /* host-side veth the packet was seen on */
	__u16 endpoint_id;  /* local endpoint concerned (0 = none) */
	__u16 pad2;
	__u32 rule_ref;     /* policy rule that decided (0 = default / none) */
	__u32 len;          /* packet length in bytes */
	__u32 count;        /* packets this event stands for (>1 when aggregated) */
	/* TRANSLATION events: of the socket hooks (ifindex 0), the client's network namespace
	 * (bpf_get_netns_cookie), which the agent maps to a pod; of the device hooks (ifindex set),
	 * the client's IPv4 address in the low 32 bits; 0 in every other event. */
	__u64 netns_cookie;
};

/* mb_event_config.flags */
#define MB_EVENTS_F_DISABLED 0x1 /* emit nothing (benchmarks compare on vs off) */

/*
 * Runtime knobs of event emission (array, one entry). All zero means "on,
 * compile-time defaults", so a fresh map behaves sensibly before the agent
 * writes it.
 */
struct mb_event_config {
	__u32 flags;          /* MB_EVENTS_F_* */
	__u32 rate_per_sec;   /* token bucket refill per CPU (0 = MB_EVENTS_RATE) */
	__u32 burst;          /* token bucket size per CPU (0 = MB_EVENTS_BURST) */
	__u32 aggregate_ms;   /* at most one drop event per flow+reason this often (0 = MB_EVENTS_AGGREGATE_MS) */
};

/* Per-CPU accounting of events: lost ones are counted, never silent. */
struct mb_event_stats {
	__u64 emitted;        /* written to the ring buffer */
	__u64 rate_limited;   /* refused by the token bucket */
	__u64 ringbuf_full;   /* refused by the ring buffer (reader too slow) */
	__u64 aggregated;     /* drops folded into a later event's count */
};

/* Kernel-internal (not read by Python): drop aggregation and rate limiting. */
struct mb_event_agg_key {
	struct mb_ct_tuple4 tuple; /* as the packet travels */
	__u8 reason;
	__u8 direction;
	__u8 pad[2];
};

struct mb_event_agg_value {
	__u64 last_emit_ns;
	__u32 suppressed; /* packets since the last event of this flow+reason */
	__u32 pad;
};

/* Tokens are counted in billionths so that a refill is elapsed_ns * rate. */
struct mb_event_bucket {
	__u64 last_ns;     /* last refill */
	__u64 nano_tokens; /* one event costs 1e9 */
};

/* ---- load balancing (Services): lib/lb.h, bpf_sock.c ----------------------- */

/*
 * A frontend (service address, port, protocol) has a master entry (slot 0)
 * saying how many backend slots it has, and one entry per slot (1..count)
 * naming a backend by id. Backends live in their own map, so a backend
 * shared by several frontends is written once, and a connection picks a
 * slot with one lookup. The agent writes new backends, then slots, then
 * masters, and deletes stale backends last: no lookup ever finds a slot
 * whose backend is missing. TRANSLATION events carry: saddr/sport = the
 * frontend the application asked for, daddr/dport = the backend (0 when
 * refused), rule_ref = the frontend's rev_nat_index, netns_cookie (the socket
 * hooks' client namespace; the device hooks' client address, with ifindex).
 */

/* mb_lb4_key.scope: which set of backends (traffic from outside vs from this node). */
#define MB_LB_SCOPE_EXTERNAL 0 /* the frontend's backends; the only set unless MB_LB_F_TWO_SCOPES */
#define MB_LB_SCOPE_INTERNAL 1 /* backends for this node's own pods and processes, when they differ */

struct mb_lb4_key {
	__be32 address; /* ClusterIP, externalIP, LoadBalancer IP; NodePort: a node address */
	__be16 dport;   /* frontend port */
	__u16 slot;     /* 0: the master entry; 1..count: the backend slots */
	__u8 proto;     /* MB_IPPROTO_TCP / MB_IPPROTO_UDP */
	__u8 scope;     /* MB_LB_SCOPE_* */
	__u8 pad[2];
};

/* mb_lb4_service.flags (master entry) */
#define MB_LB_F_CLUSTER_IP 0x1
#define MB_LB_F_NODE_PORT 0x2      /* per-packet path only: the socket hooks leave it alone */
#define MB_LB_F_EXTERNAL_IP 0x4
#define MB_LB_F_LOAD_BALANCER 0x8
#define MB_LB_F_AFFINITY 0x10      /* sessionAffinity ClientIP, for affinity_timeout_s */
#define MB_LB_F_TWO_SCOPES 0x20    /* this node's own traffic has its own slots (MB_LB_SCOPE_INTERNAL) */
#define MB_LB_F_LOCAL_ONLY 0x40    /* a traffic policy Local chose the backends (informational) */
#define MB_LB_F_TERMINATING 0x80   /* no ready endpoint: the slots hold serving-terminating ones */

struct mb_lb4_service {
	__u32 backend_id;         /* slot > 0: the backend of this slot */
	__u32 affinity_timeout_s; /* master: ClientIP affinity timeout */
	__u16 count;              /* master: backend slots (0: no usable backend, refuse) */
	__u16 rev_nat_index;      /* the frontend's id (reverse translation, affinity, flows) */
	__u16 flags;              /* master: MB_LB_F_* */
	__u16 pad;
};

/* mb_lb4_backend.flags */
#define MB_LB_BACKEND_F_TERMINATING 0x1 /* serving but terminating (used only when no ready one) */
#define MB_LB_BACKEND_F_LOCAL 0x2       /* on this node */

struct mb_lb4_backend_key {
	__u32 backend_id; /* 1.. (0 is never a backend) */
};

struct mb_lb4_backend {
	__be32 address;
	__be16 port; /* the endpoint's port (named targetPorts resolved per endpoint) */
	__u8 proto;
	__u8 flags;  /* MB_LB_BACKEND_F_* */
};

/* rev_nat_index -> the frontend (replies and getpeername show the service address). */
struct mb_lb4_rev_nat_key {
	__u16 rev_nat_index;
	__u16 pad;
};

struct mb_lb4_rev_nat {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* (backend, frontend) pairs that exist: a remembered choice (affinity, a UDP socket) is kept
 * only while its backend still serves the frontend. */
struct mb_lb4_member_key {
	__u32 backend_id;
	__u16 rev_nat_index;
	__u16 pad;
};

struct mb_lb4_member {
	__u16 slot; /* informational: the slot the backend holds */
	__u16 pad;
};

/* mb_lb4_affinity_key.client_kind */
#define MB_LB_CLIENT_NETNS 0  /* a network namespace cookie: ClientIP affinity at the socket */
#define MB_LB_CLIENT_IP 1     /* an IPv4 address (network order): ClientIP affinity per packet */
#define MB_LB_CLIENT_SOCKET 2 /* a socket cookie: the backend an unconnected UDP socket sends to */

struct mb_lb4_affinity_key {
	__u64 client;
	__u16 rev_nat_index;
	__u8 client_kind; /* MB_LB_CLIENT_* */
	__u8 pad[5];
};

struct mb_lb4_affinity {
	__u64 last_used_ns; /* bpf_ktime_get_ns() */
	__u32 backend_id;
	__u32 pad;
};

/* (socket, backend address as the socket sees it) -> the frontend: recvmsg/getpeername. */
struct mb_lb4_sock_key {
	__u64 cookie; /* bpf_get_socket_cookie */
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct mb_lb4_sock_value {
	__be32 address;
	__be16 port;
	__u16 rev_nat_index;
};

/* Index of the per-CPU counters in mb_lb_stats_v1. */
enum mb_lb_stat {
	MB_LB_STAT_TRANSLATED = 0,   /* a connect/sendmsg to a frontend got a backend */
	MB_LB_STAT_REFUSED = 1,      /* a frontend without a usable backend: ECONNREFUSED */
	MB_LB_STAT_REVERSED = 2,     /* recvmsg/getpeername showed the frontend again */
	MB_LB_STAT_AFFINITY_HIT = 3, /* a remembered ClientIP choice was used */
	MB_LB_STAT_FAILED = 4,       /* a slot or backend missing (never expected: write order) */
	MB_LB_STAT_COUNT = 5,
};

struct mb_lb_stats {
	__u64 count;
};

/* ---- per-packet load balancing on the node's devices (bpf_host.c, lib/nodeport.h) ---- */

/*
 * Maglev lookup table of a per-packet frontend (NodePort, externalIP,
 * LoadBalancer IP): (frontend id, index 0..M-1) -> backend id, M the
 * configured prime (MB_LB_MAGLEV_SIZE). A new flow takes the entry of its
 * 5-tuple's hash, so every node (and a restarted agent) sends it to the
 * same backend, and removing one of N backends moves about 1/N of flows.
 */
struct mb_lb4_maglev_key {
	__u16 rev_nat_index;
	__u16 pad;
	__u32 index;
};

struct mb_lb4_maglev {
	__u32 backend_id;
};

/* mb_lb4_nat_key.dir */
#define MB_LB_NAT_FORWARD 0 /* the packet as it arrives from the client: where it goes */
#define MB_LB_NAT_REPLY 1   /* the backend's reply as the node sees it: what the client must see */

/*
 * One entry per direction of a translated flow (LRU): the forward entry
 * keeps an established flow on its backend while that backend serves the
 * frontend, the reply entry turns the backend's answer back into the
 * frontend's. A backend on another node sees the node's address as source
 * (SNAT, flags MB_LB_NAT_F_SNAT); a local one the client's own.
 */
struct mb_lb4_nat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* MB_LB_NAT_* */
	__u8 pad[2];
};

#define MB_LB_NAT_F_SNAT 0x1

struct mb_lb4_nat {
	__be32 saddr; /* the addresses and ports the packet gets */
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u32 backend_id;    /* forward: the backend chosen */
	__u16 rev_nat_index; /* the frontend */
	__u8 flags;          /* MB_LB_NAT_F_* */
	__u8 pad;
};

/* ---- XDP prefilter (bpf_xdp.c, lib/prefilter.h; membrane/prefilter_rules.py) ---- */

#define MB_PREFILTER_RULES_MAX 256   /* rules in force at once: one bank of mb_prefilter_rules */
#define MB_PREFILTER_REFS_MAX 4096   /* counter slots (rules and deny lists); slot 0 is unused */
#define MB_PREFILTER_PAYLOAD_MAX 16  /* bytes a payload match compares */

/* mb_prefilter_rule.action (membrane.prefilter_rules.Action) */
enum mb_prefilter_action {
	MB_PF_ACTION_DROP = 1,
	MB_PF_ACTION_COUNT = 2,
	MB_PF_ACTION_RATE_LIMIT = 3,
};

/* Facts the prefilter finds out about each IPv4 packet once (membrane.prefilter_rules.Fact). */
#define MB_PF_F_TRUNCATED 0x1         /* fewer bytes than the IPv4 header needs (20, or its header length) */
#define MB_PF_F_FRAG_RESERVED 0x8     /* the reserved flag bit */
#define MB_PF_F_FRAG_DF 0x4
#define MB_PF_F_FRAG_MF 0x2
#define MB_PF_F_LEN_SHORTER 0x10      /* fewer bytes present than the total length says */
#define MB_PF_F_LEN_LONGER 0x20       /* more bytes present than it says, beyond Ethernet padding */
#define MB_PF_F_LEN_MISMATCH 0x40     /* either */
#define MB_PF_F_LEN_BELOW_HEADER 0x80 /* total length < header length */
#define MB_PF_F_FRAG_OVERFLOW 0x100   /* offset * 8 + payload > 65535 */
#define MB_PF_F_L4 0x200              /* a complete TCP/UDP/SCTP header: its fields are valid */
#define MB_PF_F_L4_TRUNCATED 0x400    /* TCP/UDP first fragment whose header (TCP: by data offset) is cut short */
#define MB_PF_F_UDP_LEN_MISMATCH 0x800 /* UDP length != IP payload length (unfragmented UDP) */

/* mb_prefilter_rule.flags */
#define MB_PF_R_PROTOCOL 0x1 /* compare the protocol */

/* mb_prefilter_rule.payload_base: where payload_offset counts from */
enum mb_prefilter_payload_base {
	MB_PF_BASE_IP = 0,      /* the IPv4 header */
	MB_PF_BASE_L4 = 1,      /* the L4 header */
	MB_PF_BASE_PAYLOAD = 2, /* after the TCP (by data offset) or UDP header; the L4 header otherwise */
};

/*
 * One rule (array mb_prefilter_rules_v1: two banks of MB_PREFILTER_RULES_MAX,
 * the agent writes the idle bank, then switches mb_prefilter_config_v1 to it).
 * Every range is inclusive; a rule that does not look at a field has its full
 * range. Addresses are network order, ports host order.
 */
struct mb_prefilter_rule {
	__u32 rule_ref;      /* counter slot, and the flow events' rule_ref */
	__u8 action;         /* enum mb_prefilter_action */
	__u8 protocol;       /* compared when flags has MB_PF_R_PROTOCOL */
	__u16 flags;         /* MB_PF_R_* */
	__u32 facts_mask;    /* MB_PF_F_* this rule looks at ... */
	__u32 facts_value;   /* ... and what they must be */
	__be32 saddr;
	__be32 smask;        /* 0: any source */
	__be32 daddr;
	__be32 dmask;        /* 0: any destination */
	__u8 ihl_min;        /* header length in 32-bit words */
	__u8 ihl_max;
	__u8 ttl_min;
	__u8 ttl_max;
	__u16 tot_len_min;
	__u16 tot_len_max;
	__u16 frag_off_min;  /* 8-byte units */
	__u16 frag_off_max;
	__u16 sport_min;
	__u16 sport_max;
	__u16 dport_min;
	__u16 dport_max;
	__u8 tcp_flags_mask;
	__u8 tcp_flags_value;
	__u8 tcp_doff_min;   /* 32-bit words */
	__u8 tcp_doff_max;
	__u16 payload_offset;
	__u8 payload_base;   /* enum mb_prefilter_payload_base */
	__u8 payload_len;    /* 0: no payload match */
	__u32 rate_pps;      /* ratelimit: packets per second per source */
	__u32 rate_burst;    /* ratelimit: bucket size in packets */
	__u8 payload_value[MB_PREFILTER_PAYLOAD_MAX]; /* already masked, zero beyond payload_len */
	__u8 payload_mask[MB_PREFILTER_PAYLOAD_MAX];  /* zero beyond payload_len */
};

/* mb_prefilter_config.active: which bank is in force, and how many of its rules. */
#define MB_PF_ACTIVE_BANK 0x80000000U
#define MB_PF_ACTIVE_COUNT 0xffffU

/*
 * Which rules are in force (array, one entry). `active` is read once per
 * packet and written in one store, so a packet sees the old set or the new
 * one, never a half-written bank. All zero (a fresh map): no rules.
 */
struct mb_prefilter_config {
	__u32 active;       /* MB_PF_ACTIVE_BANK bit | rule count */
	__u32 generation;   /* the agent's number of the set in force (read back for status) */
};

/* Per-CPU counters per slot (rule or deny list). */
struct mb_prefilter_counter {
	__u64 packets;         /* matched */
	__u64 bytes;
	__u64 dropped_packets; /* of those, dropped */
	__u64 dropped_bytes;
};

/* CIDR deny list: LPM trie of source prefixes. */
struct mb_prefilter_cidr_key {
	__u32 prefixlen;
	__be32 ip4;
};

struct mb_prefilter_cidr_value {
	__u32 rule_ref; /* the list's counter slot */
};

/* Kernel-internal (pinned, read by tests): token bucket per (ratelimit rule, source). */
struct mb_prefilter_rate_key {
	__u32 rule_ref;
	__be32 saddr;
};

struct mb_prefilter_rate_value {
	__u64 last_ns;     /* last refill */
	__u64 nano_tokens; /* one packet costs 1e9 */
};

/* Kernel-internal: what the prefilter's parser found (a per-CPU scratch value, lib/prefilter.h). */
struct mb_pf_packet {
	__u32 facts;       /* MB_PF_F_* */
	__be32 saddr;
	__be32 daddr;
	__be16 sport_be;   /* for flow events */
	__be16 dport_be;
	__u16 sport;       /* host order, compared with rules */
	__u16 dport;
	__u16 tot_len;
	__u16 frag_off;    /* 8-byte units */
	__u16 l4_off;      /* from the start of the frame */
	__u16 payload_off;
	__u8 protocol;
	__u8 ihl;
	__u8 ttl;
	__u8 tcp_flags;
	__u8 tcp_doff;
	__u8 ipv4;         /* 1: an IPv4 frame (the only kind the prefilter judges) */
	__u16 pad;
	__u32 len;         /* whole frame, all buffers */
};

#endif /* MB_TYPES_H */
