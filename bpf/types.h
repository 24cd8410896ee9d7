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
	/* Reserved for the policy issue, numbers are stable. */
	MB_DROP_POLICY_INGRESS = 7,
	MB_DROP_POLICY_EGRESS = 8,
	MB_DROP_NO_ROUTE = 9,
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
	__u32 src_identity; /* reserved for policy: identity of the initiator */
	__u32 reserved;
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

/*
 * Reserved for the next issue (not declared yet so their layout can still be
 * chosen freely):
 *   - ipcache (LPM trie): { __u32 prefixlen; __be32 ip4; } ->
 *       { __u32 sec_identity; __be32 tunnel_endpoint; __u8 flags; pad }
 *   - policy (hash): { __u16 endpoint_id; __u8 direction; __u8 nexthdr;
 *       __u32 identity; __be16 dport; pad } -> { __u8 deny; pad; counters }
 *   - flow events (ringbuf): struct mb_flow_event { tuple, reason, direction,
 *       identities, ifindex, timestamp }.
 */

#endif /* MB_TYPES_H */
