/* SPDX-License-Identifier: Apache-2.0 */
/*
 * maps.h: every map of the datapath, declared in one place and pinned.
 *
 * The loader passes MB_PIN_ROOT (a directory on bpffs) and the sizes. bcc
 * creates a pinned map on first load and reuses the pinned one afterwards,
 * which is what keeps state across agent restarts. bcc does NOT check that a
 * reused pin has the declared type/key/value sizes: the Python loader checks
 * that itself (layout.py) before loading any program.
 *
 * The name suffix (_v1) is the layout version: bump it whenever the key or
 * value struct in types.h changes.
 */
#ifndef MB_MAPS_H
#define MB_MAPS_H

#include "types.h"

#ifndef MB_PIN_ROOT
#error "MB_PIN_ROOT (a bpffs directory, as a C string) must be passed by the loader"
#endif

#ifndef MB_ENDPOINTS_MAX
#define MB_ENDPOINTS_MAX 4096
#endif
#ifndef MB_CT_MAX
#define MB_CT_MAX 65536
#endif
#ifndef MB_METRICS_MAX
#define MB_METRICS_MAX 1024
#endif
#ifndef MB_IPCACHE_MAX
#define MB_IPCACHE_MAX 65536
#endif
#ifndef MB_POLICY_MAX
#define MB_POLICY_MAX 65536
#endif
#ifndef MB_CIDR_MAX
#define MB_CIDR_MAX 16384
#endif
#ifndef MB_LB_SERVICES_MAX
#define MB_LB_SERVICES_MAX 65536
#endif
#ifndef MB_LB_BACKENDS_MAX
#define MB_LB_BACKENDS_MAX 65536
#endif
#ifndef MB_LB_REV_NAT_MAX
#define MB_LB_REV_NAT_MAX 65536
#endif
#ifndef MB_LB_AFFINITY_MAX
#define MB_LB_AFFINITY_MAX 65536
#endif
#ifndef MB_LB_MAGLEV_MAX
#define MB_LB_MAGLEV_MAX 262144
#endif
#ifndef MB_LB_MAGLEV_SIZE
#define MB_LB_MAGLEV_SIZE 1021
#endif
#ifndef MB_LB_NAT_MAX
#define MB_LB_NAT_MAX 131072
#endif
#ifndef MB_LB_SOCK_MAX
#define MB_LB_SOCK_MAX 131072
#endif
#ifndef MB_EVENTS_RINGBUF_BYTES
#define MB_EVENTS_RINGBUF_BYTES (256 * 1024) /* power of two, page multiple: ~3600 events of backlog */
#endif
#ifndef MB_EVENTS_AGG_MAX
#define MB_EVENTS_AGG_MAX 8192
#endif

#ifndef MB_PREFILTER_CIDR_MAX
#define MB_PREFILTER_CIDR_MAX 131072
#endif
#ifndef MB_PREFILTER_RATE_MAX
#define MB_PREFILTER_RATE_MAX 16384
#endif

#define MB_PIN(name) MB_PIN_ROOT "/" #name

/* IPv4 pod address -> endpoint (only pods of this node). */
BPF_TABLE_PINNED("hash", struct mb_endpoint_key, struct mb_endpoint_info,
		 mb_endpoints_v1, MB_ENDPOINTS_MAX, MB_PIN(mb_endpoints_v1));

/*
 * Conntrack, LRU so that a full table evicts the oldest flow instead of failing.
 * v2: entries carry the policy revision they were judged under (an upgrade
 * from v1 starts with an empty table: the loader removes the old pin).
 */
BPF_TABLE_PINNED("lru_hash", struct mb_ct_tuple4, struct mb_ct_entry,
		 mb_ct4_v2, MB_CT_MAX, MB_PIN(mb_ct4_v2));

/* The current policy revision (struct mb_policy_rev), one entry written by the agent. */
BPF_TABLE_PINNED("array", __u32, struct mb_policy_rev,
		 mb_policy_rev_v1, 1, MB_PIN(mb_policy_rev_v1));

/* (reason, direction) -> packets, bytes; per CPU so updates need no atomics. */
BPF_TABLE_PINNED("percpu_hash", struct mb_metrics_key, struct mb_metrics_value,
		 mb_metrics_v1, MB_METRICS_MAX, MB_PIN(mb_metrics_v1));

/*
 * IPv4 prefix -> security identity. LPM trie: the kernel requires
 * BPF_F_NO_PREALLOC for it (it allocates nodes on update). Holds pods,
 * nodes and every ipBlock prefix of mb_cidr_v1 too (lib/ipcache.h relies
 * on that: for no-pod addresses the ipcache answer is the CIDR identity).
 */
BPF_TABLE_PINNED("lpm_trie", struct mb_ipcache_key, struct mb_ipcache_value,
		 mb_ipcache_v1, MB_IPCACHE_MAX, MB_PIN(mb_ipcache_v1), BPF_F_NO_PREALLOC);

/*
 * IPv4 ipBlock prefix -> CIDR identity (see struct mb_cidr_key): the CIDR
 * identity of a peer address, judged alongside its identity on new flows.
 */
BPF_TABLE_PINNED("lpm_trie", struct mb_cidr_key, struct mb_cidr_value,
		 mb_cidr_v1, MB_CIDR_MAX, MB_PIN(mb_cidr_v1), BPF_F_NO_PREALLOC);

/* This node's facts (tunnel device), one entry written by the agent. */
BPF_TABLE_PINNED("array", __u32, struct mb_node_config,
		 mb_node_config_v1, 1, MB_PIN(mb_node_config_v1));

/* (endpoint, peer identity, direction, protocol, port prefix) -> verdict. */
BPF_TABLE_PINNED("lpm_trie", struct mb_policy_key, struct mb_policy_value,
		 mb_policy_v1, MB_POLICY_MAX, MB_PIN(mb_policy_v1), BPF_F_NO_PREALLOC);

/*
 * Services (lib/lb.h): frontend slots, backends, the frontends by id
 * (reverse translation), which backend serves which frontend, remembered
 * choices (ClientIP affinity, unconnected UDP sockets; LRU) and the
 * sockets' reverse translations (LRU). Shared with the per-packet path.
 */
BPF_TABLE_PINNED("hash", struct mb_lb4_key, struct mb_lb4_service,
		 mb_lb4_services_v1, MB_LB_SERVICES_MAX, MB_PIN(mb_lb4_services_v1));
BPF_TABLE_PINNED("hash", struct mb_lb4_backend_key, struct mb_lb4_backend,
		 mb_lb4_backends_v1, MB_LB_BACKENDS_MAX, MB_PIN(mb_lb4_backends_v1));
BPF_TABLE_PINNED("hash", struct mb_lb4_rev_nat_key, struct mb_lb4_rev_nat,
		 mb_lb4_rev_nat_v1, MB_LB_REV_NAT_MAX, MB_PIN(mb_lb4_rev_nat_v1));
BPF_TABLE_PINNED("hash", struct mb_lb4_member_key, struct mb_lb4_member,
		 mb_lb4_members_v1, MB_LB_SERVICES_MAX, MB_PIN(mb_lb4_members_v1));
BPF_TABLE_PINNED("lru_hash", struct mb_lb4_affinity_key, struct mb_lb4_affinity,
		 mb_lb4_affinity_v1, MB_LB_AFFINITY_MAX, MB_PIN(mb_lb4_affinity_v1));
BPF_TABLE_PINNED("lru_hash", struct mb_lb4_sock_key, struct mb_lb4_sock_value,
		 mb_lb4_sock_v1, MB_LB_SOCK_MAX, MB_PIN(mb_lb4_sock_v1));
/* The per-packet path's Maglev tables and NAT entries (bpf_host.c, lib/nodeport.h). */
BPF_TABLE_PINNED("hash", struct mb_lb4_maglev_key, struct mb_lb4_maglev,
		 mb_lb4_maglev_v1, MB_LB_MAGLEV_MAX, MB_PIN(mb_lb4_maglev_v1));
BPF_TABLE_PINNED("lru_hash", struct mb_lb4_nat_key, struct mb_lb4_nat,
		 mb_lb4_nat_v1, MB_LB_NAT_MAX, MB_PIN(mb_lb4_nat_v1));
BPF_TABLE_PINNED("percpu_array", __u32, struct mb_lb_stats,
		 mb_lb_stats_v1, MB_LB_STAT_COUNT, MB_PIN(mb_lb_stats_v1));

/*
 * Flow events. Spelled out instead of BPF_RINGBUF_OUTPUT because that macro
 * cannot pin; pinned, a restarted agent reads the ring the still-attached
 * programs write to. Layout as bcc's macro (its frontend relies on it).
 */
struct mb_events_v1_table_t {
	int key;
	__u32 leaf;
	int (*ringbuf_output)(void *, __u64, __u64);
	void *(*ringbuf_reserve)(__u64);
	void (*ringbuf_discard)(void *, __u64);
	void (*ringbuf_submit)(void *, __u64);
	__u32 max_entries;
};
__attribute__((section("maps/ringbuf:" MB_PIN(mb_events_v1))))
struct mb_events_v1_table_t mb_events_v1 = { .max_entries = MB_EVENTS_RINGBUF_BYTES };

/* Emitted / rate-limited / ring-full counts, per CPU. */
BPF_TABLE_PINNED("percpu_array", __u32, struct mb_event_stats,
		 mb_event_stats_v1, 1, MB_PIN(mb_event_stats_v1));

/* Event switch and rate (one entry, written by the agent). */
BPF_TABLE_PINNED("array", __u32, struct mb_event_config,
		 mb_event_config_v1, 1, MB_PIN(mb_event_config_v1));

/* Token bucket per CPU: no atomics, no cross-CPU cache line bouncing. */
BPF_TABLE("percpu_array", __u32, struct mb_event_bucket, mb_event_bucket, 1);

/* Last drop event per (flow, reason): floods of one flow become one event a second. */
BPF_TABLE("lru_hash", struct mb_event_agg_key, struct mb_event_agg_value,
	  mb_event_agg, MB_EVENTS_AGG_MAX);

/*
 * The event being built, per CPU (kept off the stack, see lib/events.h).
 * Also how bcc learns struct mb_flow_event, which the loader checks against
 * its Python mirror (ring buffer records have no type bcc would know).
 */
BPF_TABLE("percpu_array", __u32, struct mb_flow_event, mb_event_scratch, 1);

/* ---- XDP prefilter (bpf_xdp.c) ---- */

/* Two banks of rules: [0, MAX) and [MAX, 2 MAX); mb_prefilter_config_v1 says which is in force. */
BPF_TABLE_PINNED("array", __u32, struct mb_prefilter_rule,
		 mb_prefilter_rules_v1, 2 * MB_PREFILTER_RULES_MAX, MB_PIN(mb_prefilter_rules_v1));

BPF_TABLE_PINNED("array", __u32, struct mb_prefilter_config,
		 mb_prefilter_config_v1, 1, MB_PIN(mb_prefilter_config_v1));

/* Packets/bytes matched and dropped per rule or deny list (slot = rule_ref). */
BPF_TABLE_PINNED("percpu_array", __u32, struct mb_prefilter_counter,
		 mb_prefilter_counters_v1, MB_PREFILTER_REFS_MAX, MB_PIN(mb_prefilter_counters_v1));

/* Source prefixes dropped on arrival (deny lists), LPM. */
BPF_TABLE_PINNED("lpm_trie", struct mb_prefilter_cidr_key, struct mb_prefilter_cidr_value,
		 mb_prefilter_cidr_v1, MB_PREFILTER_CIDR_MAX, MB_PIN(mb_prefilter_cidr_v1), BPF_F_NO_PREALLOC);

/* Token buckets of ratelimit rules, per source; LRU: a flood of sources evicts idle ones. */
BPF_TABLE_PINNED("lru_hash", struct mb_prefilter_rate_key, struct mb_prefilter_rate_value,
		 mb_prefilter_rate_v1, MB_PREFILTER_RATE_MAX, MB_PIN(mb_prefilter_rate_v1));

/* The packet being judged by the prefilter, per CPU (kept off the stack: lib/prefilter.h says why). */
BPF_TABLE("percpu_array", __u32, struct mb_pf_packet, mb_pf_scratch, 1);

#endif /* MB_MAPS_H */
