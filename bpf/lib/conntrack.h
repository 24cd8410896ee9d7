/* SPDX-License-Identifier: Apache-2.0 */
/*
 * conntrack.h: IPv4 connection tracking.
 *
 * One entry per flow, keyed by the tuple of the packet that opened it. A
 * packet is looked up as-is (original direction, "tx") and then reversed
 * (reply direction, "rx"); if neither exists a new entry is created.
 * Expiry is done from user space (agent GC) using last_seen_ns + lifetime_s,
 * where lifetime_s is chosen here from the flow state.
 *
 * Policy is judged when a flow is created; later packets (replies
 * included) ride on the entry as long as the policy revision it was judged
 * under is still the current one. After a policy change the next packet of
 * an established flow has it judged again (lib/flow.h, mb_flow_recheck): a
 * flow the new policy denies is cut, so `membranectl apply --wait` means
 * no connection keeps an old verdict.
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
	MB_CT_NEW = 0,         /* no entry (first packet of a flow, or untracked) */
	MB_CT_ESTABLISHED = 1, /* original direction of a known flow */
	MB_CT_REPLY = 2,       /* reply direction of a known flow */
	MB_CT_RELATED = 3,     /* ICMP error about a known flow (mb_ct_icmp_related) */
};

#define MB_CT_F_CLOSING (MB_CT_F_TX_CLOSING | MB_CT_F_RX_CLOSING)
#define MB_CT_F_DENIED (MB_CT_F_DENIED_EGRESS | MB_CT_F_DENIED_INGRESS)

static __always_inline __u32 mb_ct_lifetime(__u8 nexthdr, __u16 flags)
{
	if (nexthdr != MB_IPPROTO_TCP)
		return MB_CT_LIFETIME_NONTCP;
	/* A denied flow keeps its orientation as long as an established one would
	 * live, however its peers try to close it. */
	if (flags & MB_CT_F_DENIED)
		return MB_CT_LIFETIME_TCP;
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
 * Account one packet to the flow it belongs to. Returns MB_CT_ESTABLISHED or
 * MB_CT_REPLY for a known flow, MB_CT_NEW when there is none: the caller then
 * judges policy and calls mb_ct_create() only if the flow is allowed, so a
 * denied packet leaves no entry behind that later packets could ride on.
 * *closed is set when this packet completes the close of a TCP flow (both
 * sides sent FIN, or an RST), for the TRACE_END event; *found is the entry
 * of a known flow.
 */
static __always_inline int mb_ct_lookup(const struct mb_ct_tuple4 *tuple, __u8 tcp_flags,
					__u32 bytes, __u8 *closed, struct mb_ct_entry **found)
{
	struct mb_ct_tuple4 reverse = {};
	struct mb_ct_entry *entry;
	__u64 now = bpf_ktime_get_ns();
	int is_tcp = tuple->nexthdr == MB_IPPROTO_TCP;
	__u16 flags;

	*closed = 0;
	entry = mb_ct4_v2.lookup((struct mb_ct_tuple4 *)tuple);
	*found = entry;
	if (entry) {
		flags = entry->flags;
		/* A fresh SYN on a closing (or denied) flow is the 5-tuple being
		 * reused: a new connection, judged by the policy of now
		 * (mb_ct_create overwrites the entry if it is allowed). */
		if (is_tcp && (flags & (MB_CT_F_CLOSING | MB_CT_F_DENIED)) &&
		    (tcp_flags & (MB_TCP_SYN | MB_TCP_ACK)) == MB_TCP_SYN)
			return MB_CT_NEW;
		if (is_tcp)
			flags |= mb_ct_closing_flags(tcp_flags, MB_CT_F_TX_CLOSING);
		*closed = (flags & MB_CT_F_CLOSING) == MB_CT_F_CLOSING &&
			  (entry->flags & MB_CT_F_CLOSING) != MB_CT_F_CLOSING;
		entry->flags = flags;
		entry->tx_tcp_flags |= tcp_flags;
		entry->lifetime_s = mb_ct_lifetime(tuple->nexthdr, flags);
		entry->last_seen_ns = now;
		__sync_fetch_and_add(&entry->tx_packets, 1);
		__sync_fetch_and_add(&entry->tx_bytes, bytes);
		return MB_CT_ESTABLISHED;
	}

	mb_ct_reverse(tuple, &reverse);
	entry = mb_ct4_v2.lookup(&reverse);
	*found = entry;
	if (entry) {
		flags = entry->flags | MB_CT_F_SEEN_REPLY;
		if (is_tcp)
			flags |= mb_ct_closing_flags(tcp_flags, MB_CT_F_RX_CLOSING);
		*closed = (flags & MB_CT_F_CLOSING) == MB_CT_F_CLOSING &&
			  (entry->flags & MB_CT_F_CLOSING) != MB_CT_F_CLOSING;
		entry->flags = flags;
		entry->rx_tcp_flags |= tcp_flags;
		entry->lifetime_s = mb_ct_lifetime(tuple->nexthdr, flags);
		entry->last_seen_ns = now;
		__sync_fetch_and_add(&entry->rx_packets, 1);
		__sync_fetch_and_add(&entry->rx_bytes, bytes);
		return MB_CT_REPLY;
	}
	return MB_CT_NEW;
}

/* The current policy revision (0 until the agent writes one). */
static __always_inline __u32 mb_policy_revision(void)
{
	__u32 zero = 0;
	struct mb_policy_rev *rev = mb_policy_rev_v1.lookup(&zero);

	return rev ? rev->revision : 0;
}

/*
 * Create (or, for a reused tuple, overwrite) the entry of an allowed new
 * flow. policy_flags: MB_CT_F_POLICY_* that were enforced; policy_rev: the
 * revision read before the verdict was taken. Returns 0, or -1
 * when the map refuses (the caller drops with MB_DROP_CT_CREATE_FAILED).
 */
static __always_inline int mb_ct_create(const struct mb_ct_tuple4 *tuple, __u8 tcp_flags,
					__u32 bytes, __u32 src_identity, __u32 dst_identity,
					__u16 policy_flags, __u32 policy_rev)
{
	__u64 now = bpf_ktime_get_ns();
	struct mb_ct_entry fresh = {
		.created_ns = now,
		.last_seen_ns = now,
		.tx_packets = 1,
		.tx_bytes = bytes,
		.tx_tcp_flags = tcp_flags,
		.src_identity = src_identity,
		.dst_identity = dst_identity,
		.policy_rev = policy_rev,
	};

	fresh.flags = policy_flags;
	if (tuple->nexthdr == MB_IPPROTO_TCP)
		fresh.flags |= mb_ct_closing_flags(tcp_flags, MB_CT_F_TX_CLOSING);
	fresh.lifetime_s = mb_ct_lifetime(tuple->nexthdr, fresh.flags);
	if (mb_ct4_v2.update((struct mb_ct_tuple4 *)tuple, &fresh) != 0)
		return -1;
	return 0;
}

/*
 * An ICMP error (destination unreachable, e.g. "fragmentation needed" or
 * "port unreachable"; time exceeded; parameter problem) about a packet of a
 * tracked flow is part of that flow ("related", as netfilter says): it
 * passes without a policy verdict of its own, else PMTU discovery and fast
 * failure break for allowed connections. The quoted header is matched in
 * both orientations. Inner IP options are not supported (never related).
 */
static __always_inline int mb_ct_icmp_related(struct __sk_buff *skb, struct iphdr *ip4)
{
	void *data_end = (void *)(long)skb->data_end;
	struct mb_icmp_echo *icmp = (void *)ip4 + ip4->ihl * 4;
	struct iphdr *inner = (void *)(icmp + 1);
	__be16 *ports = (void *)(inner + 1);
	struct mb_ct_tuple4 tuple = {}, reverse = {};

	if ((void *)(ports + 2) > data_end)
		return 0;
	if (icmp->type != MB_ICMP_DEST_UNREACH && icmp->type != MB_ICMP_TIME_EXCEEDED &&
	    icmp->type != MB_ICMP_PARAMETERPROB)
		return 0;
	if (inner->version != 4 || inner->ihl != 5)
		return 0;
	tuple.saddr = inner->saddr;
	tuple.daddr = inner->daddr;
	tuple.nexthdr = inner->protocol;
	switch (inner->protocol) {
	case MB_IPPROTO_TCP:
	case MB_IPPROTO_UDP:
	case MB_IPPROTO_SCTP:
		tuple.sport = ports[0];
		tuple.dport = ports[1];
		break;
	case MB_IPPROTO_ICMP:
		/* Only an echo request can be quoted back to its sender's flow. */
		if (((struct mb_icmp_echo *)ports)->type != MB_ICMP_ECHO)
			return 0;
		if ((void *)((struct mb_icmp_echo *)ports + 1) > data_end)
			return 0;
		tuple.sport = ((struct mb_icmp_echo *)ports)->id;
		break;
	default:
		return 0;
	}
	if (mb_ct4_v2.lookup(&tuple))
		return 1;
	mb_ct_reverse(&tuple, &reverse);
	return mb_ct4_v2.lookup(&reverse) != 0;
}

#endif /* MB_LIB_CONNTRACK_H */
