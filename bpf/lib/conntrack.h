/* SPDX-License-Identifier: Apache-2.0 */
/*
 * conntrack.h: IPv4 connection tracking.
 *
 * One entry per flow, keyed by the tuple of the packet that opened it. A
 * packet is looked up as-is (original direction, "tx") and then reversed
 * (reply direction, "rx"); if neither exists a new entry is created.
 * Expiry is done from user space (agent GC) using last_seen_ns + lifetime_s,
 * where lifetime_s is chosen here from the flow state.
 */
#ifndef MB_LIB_CONNTRACK_H
#define MB_LIB_CONNTRACK_H

#include "common.h"
#include "ipv4.h"
#include "../maps.h"

/* Idle timeouts in seconds; the loader passes the agent's constants. */
#ifndef MB_CT_LIFETIME_TCP
#define MB_CT_LIFETIME_TCP 21600 /* established TCP */
#endif
#ifndef MB_CT_SYN_TIMEOUT
#define MB_CT_SYN_TIMEOUT 60     /* TCP not yet answered */
#endif
#ifndef MB_CT_CLOSE_TIMEOUT
#define MB_CT_CLOSE_TIMEOUT 10   /* TCP after FIN or RST */
#endif
#ifndef MB_CT_LIFETIME_NONTCP
#define MB_CT_LIFETIME_NONTCP 60 /* UDP, ICMP echo */
#endif

enum mb_ct_status {
	MB_CT_NEW = 0,         /* first packet of a flow: entry created */
	MB_CT_ESTABLISHED = 1, /* original direction of a known flow */
	MB_CT_REPLY = 2,       /* reply direction of a known flow */
};

#define MB_CT_F_CLOSING (MB_CT_F_TX_CLOSING | MB_CT_F_RX_CLOSING)

static __always_inline __u32 mb_ct_lifetime(__u8 nexthdr, __u16 flags)
{
	if (nexthdr != MB_IPPROTO_TCP)
		return MB_CT_LIFETIME_NONTCP;
	if (flags & MB_CT_F_CLOSING)
		return MB_CT_CLOSE_TIMEOUT;
	if (!(flags & MB_CT_F_SEEN_REPLY))
		return MB_CT_SYN_TIMEOUT;
	return MB_CT_LIFETIME_TCP;
}

static __always_inline void mb_ct_reverse(const struct mb_ct_tuple4 *in, struct mb_ct_tuple4 *out)
{
	out->saddr = in->daddr;
	out->daddr = in->saddr;
	out->sport = in->dport;
	out->dport = in->sport;
	out->nexthdr = in->nexthdr;
}

/* FIN/RST from one side: closing that side (RST closes both). */
static __always_inline __u16 mb_ct_closing_flags(__u8 tcp_flags, __u16 own_side)
{
	if (tcp_flags & MB_TCP_RST)
		return MB_CT_F_CLOSING;
	if (tcp_flags & MB_TCP_FIN)
		return own_side;
	return 0;
}

/*
 * Track one packet. Returns enum mb_ct_status, or -1 when a new entry cannot
 * be created (the caller drops with MB_DROP_CT_CREATE_FAILED).
 */
static __always_inline int mb_ct_track(const struct mb_ct_tuple4 *tuple, __u8 tcp_flags,
				       __u32 bytes, __u32 src_identity)
{
	struct mb_ct_tuple4 reverse = {};
	struct mb_ct_entry *entry;
	__u64 now = bpf_ktime_get_ns();
	int is_tcp = tuple->nexthdr == MB_IPPROTO_TCP;

	entry = mb_ct4_v1.lookup((struct mb_ct_tuple4 *)tuple);
	if (entry) {
		__u16 flags = entry->flags;

		/* A fresh SYN on a closing flow is the 5-tuple being reused. */
		if (is_tcp && (flags & MB_CT_F_CLOSING) &&
		    (tcp_flags & (MB_TCP_SYN | MB_TCP_ACK)) == MB_TCP_SYN) {
			flags &= ~(MB_CT_F_CLOSING | MB_CT_F_SEEN_REPLY);
			entry->created_ns = now;
		}
		if (is_tcp)
			flags |= mb_ct_closing_flags(tcp_flags, MB_CT_F_TX_CLOSING);
		entry->flags = flags;
		entry->tx_tcp_flags |= tcp_flags;
		entry->lifetime_s = mb_ct_lifetime(tuple->nexthdr, flags);
		entry->last_seen_ns = now;
		__sync_fetch_and_add(&entry->tx_packets, 1);
		__sync_fetch_and_add(&entry->tx_bytes, bytes);
		return MB_CT_ESTABLISHED;
	}

	mb_ct_reverse(tuple, &reverse);
	entry = mb_ct4_v1.lookup(&reverse);
	if (entry) {
		__u16 flags = entry->flags | MB_CT_F_SEEN_REPLY;

		if (is_tcp)
			flags |= mb_ct_closing_flags(tcp_flags, MB_CT_F_RX_CLOSING);
		entry->flags = flags;
		entry->rx_tcp_flags |= tcp_flags;
		entry->lifetime_s = mb_ct_lifetime(tuple->nexthdr, flags);
		entry->last_seen_ns = now;
		__sync_fetch_and_add(&entry->rx_packets, 1);
		__sync_fetch_and_add(&entry->rx_bytes, bytes);
		return MB_CT_REPLY;
	}

	struct mb_ct_entry fresh = {
		.created_ns = now,
		.last_seen_ns = now,
		.tx_packets = 1,
		.tx_bytes = bytes,
		.tx_tcp_flags = tcp_flags,
		.src_identity = src_identity,
	};
	if (is_tcp)
		fresh.flags = mb_ct_closing_flags(tcp_flags, MB_CT_F_TX_CLOSING);
	fresh.lifetime_s = mb_ct_lifetime(tuple->nexthdr, fresh.flags);
	if (mb_ct4_v1.update((struct mb_ct_tuple4 *)tuple, &fresh) != 0)
		return -1;
	return MB_CT_NEW;
}

#endif /* MB_LIB_CONNTRACK_H */
