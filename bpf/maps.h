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

#define MB_PIN(name) MB_PIN_ROOT "/" #name

/* IPv4 pod address -> endpoint (only pods of this node). */
BPF_TABLE_PINNED("hash", struct mb_endpoint_key, struct mb_endpoint_info,
		 mb_endpoints_v1, MB_ENDPOINTS_MAX, MB_PIN(mb_endpoints_v1));

/* Conntrack, LRU so that a full table evicts the oldest flow instead of failing. */
BPF_TABLE_PINNED("lru_hash", struct mb_ct_tuple4, struct mb_ct_entry,
		 mb_ct4_v1, MB_CT_MAX, MB_PIN(mb_ct4_v1));

/* (reason, direction) -> packets, bytes; per CPU so updates need no atomics. */
BPF_TABLE_PINNED("percpu_hash", struct mb_metrics_key, struct mb_metrics_value,
		 mb_metrics_v1, MB_METRICS_MAX, MB_PIN(mb_metrics_v1));

/*
 * Reserved for the next issue (see types.h for the planned layouts):
 *   mb_ipcache_v1  "lpm_trie"  prefix -> identity, tunnel endpoint (BPF_F_NO_PREALLOC)
 *   mb_policy_v1   "hash"      (endpoint, identity, direction, proto, port) -> verdict
 *   mb_events_v1   ringbuf of flow events
 */

#endif /* MB_MAPS_H */
