/* SPDX-License-Identifier: Apache-2.0 */
/* ipv4.h: IPv4 header access, L4 tuple extraction, TTL decrement. */
#ifndef MB_LIB_IPV4_H
#define MB_LIB_IPV4_H

#include "common.h"
#include "l4.h"

#define MB_IP_FRAG_OFFSET_MASK 0x1fff

static __always_inline struct iphdr *mb_ipv4_header(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip4 = data + ETH_HLEN;

	if ((void *)(ip4 + 1) > data_end)
		return 0;
	if (ip4->version != 4 || ip4->ihl < 5)
		return 0;
	return ip4;
}

/* What mb_ipv4_tuple() found. */
enum mb_l4_kind {
	MB_L4_INVALID = -1,  /* truncated L4 header */
	MB_L4_UNTRACKED = 0, /* fragment, other protocol, non-echo ICMP: no conntrack */
	MB_L4_TRACKED = 1,   /* tuple (and tcp_flags for TCP) filled in */
};

/*
 * Fill the conntrack tuple of an IPv4 packet as it travels (no reordering).
 * Non-first fragments carry no L4 header, so they are left untracked.
 */
static __always_inline int mb_ipv4_tuple(struct __sk_buff *skb, struct iphdr *ip4,
					 struct mb_ct_tuple4 *tuple, __u8 *tcp_flags)
{
	void *data_end = (void *)(long)skb->data_end;
	void *l4 = (void *)ip4 + ip4->ihl * 4;

	*tcp_flags = 0;
	tuple->saddr = ip4->saddr;
	tuple->daddr = ip4->daddr;
	tuple->nexthdr = ip4->protocol;
	tuple->sport = 0;
	tuple->dport = 0;
	if (ip4->frag_off & mb_htons(MB_IP_FRAG_OFFSET_MASK))
		return MB_L4_UNTRACKED;

	switch (ip4->protocol) {
	case MB_IPPROTO_TCP: {
		struct mb_tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return MB_L4_INVALID;
		tuple->sport = tcp->sport;
		tuple->dport = tcp->dport;
		*tcp_flags = tcp->flags;
		return MB_L4_TRACKED;
	}
	case MB_IPPROTO_UDP: {
		struct mb_udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return MB_L4_INVALID;
		tuple->sport = udp->sport;
		tuple->dport = udp->dport;
		return MB_L4_TRACKED;
	}
	case MB_IPPROTO_SCTP: {
		struct mb_sctphdr *sctp = l4;

		if ((void *)(sctp + 1) > data_end)
			return MB_L4_INVALID;
		tuple->sport = sctp->sport;
		tuple->dport = sctp->dport;
		return MB_L4_TRACKED;
	}
	case MB_IPPROTO_ICMP: {
		struct mb_icmp_echo *icmp = l4;

		if ((void *)(icmp + 1) > data_end)
			return MB_L4_INVALID;
		if (icmp->type == MB_ICMP_ECHO) {
			tuple->sport = icmp->id;
			return MB_L4_TRACKED;
		}
		if (icmp->type == MB_ICMP_ECHOREPLY) {
			tuple->dport = icmp->id;
			return MB_L4_TRACKED;
		}
		return MB_L4_UNTRACKED;
	}
	default:
		return MB_L4_UNTRACKED;
	}
}

/*
 * Decrement the TTL and patch the header checksum incrementally. TTL and
 * protocol share one 16-bit word, which is what the checksum covers. Must be
 * the last packet access of the caller: the helper invalidates packet pointers.
 */
static __always_inline int mb_ipv4_dec_ttl(struct __sk_buff *skb, struct iphdr *ip4)
{
	__u16 *word = (__u16 *)&ip4->ttl;
	__u16 old_word = *word;

	ip4->ttl -= 1;
	return bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check),
				   old_word, *word, 2);
}

#endif /* MB_LIB_IPV4_H */
