/* SPDX-License-Identifier: Apache-2.0 */
/*
 * prefilter.h: the XDP prefilter's parser and rule matcher (membrane/prefilter_rules.py is
 * the model, the manager writes the maps).
 *
 * A packet is parsed once into struct mb_pf_packet: its IPv4 and L4 fields and the facts
 * (MB_PF_F_*) a rule can ask about. Every read is bounds-checked against data_end, and a
 * field is only trusted when the bytes it comes from were there: a truncated header sets
 * MB_PF_F_TRUNCATED, a short L4 header leaves MB_PF_F_L4 clear (and, for TCP/UDP, sets
 * MB_PF_F_L4_TRUNCATED), and rules reading fields require those facts (the encoder adds
 * them), so no rule matches on bytes a packet does not have.
 *
 * Then: the source in the CIDR deny list -> drop. Else the rules of the bank in force, in
 * order, at most MB_PREFILTER_RULES_MAX (a bounded loop): count rules and ratelimit rules
 * with tokens left go on, a drop rule or an empty bucket drops. Each rule costs a few dozen
 * instructions when its cheap fields differ (bench-results/prefilter.md).
 */
#ifndef MB_LIB_PREFILTER_H
#define MB_LIB_PREFILTER_H

#include "common.h"
#include "l4.h"
#include "metrics.h"
#include "events.h"
#include "../maps.h"

/* Helpers (kernel 5.18+) bcc's helper list may lack; declared by their uapi number. */
static long (*mb_xdp_load_bytes)(struct xdp_md *ctx, __u32 offset, void *buf, __u32 len) =
	(void *)BPF_FUNC_xdp_load_bytes;
static __u64 (*mb_xdp_get_buff_len)(struct xdp_md *ctx) = (void *)BPF_FUNC_xdp_get_buff_len;

#define MB_IP_RF 0x8000
#define MB_IP_DF 0x4000
#define MB_IP_MF 0x2000
#define MB_ETH_MIN_PAYLOAD 46 /* an Ethernet frame's payload is padded to this */

/*
 * Facts are set here and only compared with rules later: the parser never branches on a fact
 * it set itself (it re-tests the packet instead), so the verifier, which would otherwise
 * track every combination of constant facts separately through the rule loop, sees them as
 * unknown values and merges the parser's paths.
 */
static __always_inline void mb_pf_parse_l4(void *l4, void *data_end, __u32 l4_avail, __u32 more_fragments,
					   struct mb_pf_packet *p)
{
	switch (p->protocol) {
	case MB_IPPROTO_TCP: {
		struct mb_tcphdr *tcp = l4;

		if (l4_avail < sizeof(*tcp) || (void *)(tcp + 1) > data_end) {
			p->facts |= MB_PF_F_L4_TRUNCATED;
			return;
		}
		p->facts |= MB_PF_F_L4;
		p->sport_be = tcp->sport;
		p->dport_be = tcp->dport;
		p->tcp_flags = tcp->flags;
		p->tcp_doff = tcp->data_offset >> 4;
		if ((__u32)p->tcp_doff * 4 > l4_avail)
			p->facts |= MB_PF_F_L4_TRUNCATED;
		p->payload_off = p->l4_off + p->tcp_doff * 4;
		break;
	}
	case MB_IPPROTO_UDP: {
		struct mb_udphdr *udp = l4;

		if (l4_avail < sizeof(*udp) || (void *)(udp + 1) > data_end) {
			p->facts |= MB_PF_F_L4_TRUNCATED;
			return;
		}
		p->facts |= MB_PF_F_L4;
		p->sport_be = udp->sport;
		p->dport_be = udp->dport;
		/* A first fragment's UDP length covers the whole datagram: only unfragmented ones compare. */
		if (!more_fragments && mb_htons(udp->len) != p->tot_len - p->ihl * 4)
			p->facts |= MB_PF_F_UDP_LEN_MISMATCH;
		p->payload_off = p->l4_off + sizeof(*udp);
		break;
	}
	case MB_IPPROTO_SCTP: {
		struct mb_sctphdr *sctp = l4;

		if (l4_avail < sizeof(*sctp) || (void *)(sctp + 1) > data_end)
			return;
		p->facts |= MB_PF_F_L4;
		p->sport_be = sctp->sport;
		p->dport_be = sctp->dport;
		p->payload_off = p->l4_off + sizeof(*sctp);
		break;
	}
	default:
		return;
	}
	p->sport = mb_htons(p->sport_be);
	p->dport = mb_htons(p->dport_be);
}

/* Fill p; p->ipv4 stays 0 for frames the prefilter does not judge (no Ethernet header, not IPv4). */
static __always_inline void mb_pf_parse(struct xdp_md *ctx, struct mb_pf_packet *p)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip4 = data + ETH_HLEN;
	__u32 ip_bytes, hdr_len, avail, frag;

	if ((void *)(eth + 1) > data_end || eth->h_proto != mb_htons(ETH_P_IP))
		return;
	p->ipv4 = 1;
	p->len = mb_xdp_get_buff_len(ctx);
	ip_bytes = p->len - ETH_HLEN;
	if ((void *)(ip4 + 1) > data_end) {
		p->facts = MB_PF_F_TRUNCATED;
		return;
	}
	p->saddr = ip4->saddr;
	p->daddr = ip4->daddr;
	p->protocol = ip4->protocol;
	p->ttl = ip4->ttl;
	p->ihl = ip4->ihl;
	p->tot_len = mb_htons(ip4->tot_len);
	frag = mb_htons(ip4->frag_off);
	p->frag_off = frag & MB_IP_FRAG_OFFSET_MASK;
	/* RF, DF, MF (bits 15, 14, 13) are MB_PF_F_FRAG_RESERVED, _DF, _MF (bits 1, 2, 3). */
	p->facts = (frag >> 12) & (MB_PF_F_FRAG_RESERVED | MB_PF_F_FRAG_DF | MB_PF_F_FRAG_MF);
	hdr_len = p->ihl * 4;
	if (p->tot_len > ip_bytes)
		p->facts |= MB_PF_F_LEN_SHORTER | MB_PF_F_LEN_MISMATCH;
	else if (p->tot_len < ip_bytes && ip_bytes > MB_ETH_MIN_PAYLOAD)
		p->facts |= MB_PF_F_LEN_LONGER | MB_PF_F_LEN_MISMATCH;
	if (p->tot_len < hdr_len)
		p->facts |= MB_PF_F_LEN_BELOW_HEADER;
	else if ((__u32)p->frag_off * 8 + (p->tot_len - hdr_len) > 65535)
		p->facts |= MB_PF_F_FRAG_OVERFLOW;
	p->l4_off = ETH_HLEN + hdr_len;
	p->payload_off = p->l4_off;
	if (hdr_len > ip_bytes) {
		p->facts |= MB_PF_F_TRUNCATED;
		return;
	}
	/* No L4 header: a broken header length, or a later fragment. */
	if (p->ihl < 5 || p->frag_off || p->tot_len < hdr_len)
		return;
	/* The L4 header must lie within the total length and the frame (padding is no header). */
	avail = (p->tot_len < ip_bytes ? p->tot_len : ip_bytes) - hdr_len;
	mb_pf_parse_l4((void *)ip4 + (hdr_len & 0x3c), data_end, avail, frag & MB_IP_MF, p);
}

/* The payload part of a rule: len bytes at base + offset, under the mask. */
static __always_inline int mb_pf_payload_matches(struct xdp_md *ctx, const struct mb_pf_packet *p,
						 const struct mb_prefilter_rule *rule)
{
	__u64 got[2] = {}, want[2], mask[2];
	__u32 len = rule->payload_len, offset = rule->payload_offset;

	if (len > MB_PREFILTER_PAYLOAD_MAX)
		return 0;
	if (rule->payload_base == MB_PF_BASE_IP)
		offset += ETH_HLEN;
	else if (rule->payload_base == MB_PF_BASE_L4)
		offset += p->l4_off;
	else
		offset += p->payload_off;
	/* The helper checks the range against the packet (all its buffers): too short, no match. */
	if (mb_xdp_load_bytes(ctx, offset & 0xffff, got, len) != 0)
		return 0;
	__builtin_memcpy(want, rule->payload_value, sizeof(want));
	__builtin_memcpy(mask, rule->payload_mask, sizeof(mask));
	/* Beyond len the mask is zero: the zeroed tail of got compares equal. */
	return (got[0] & mask[0]) == want[0] && (got[1] & mask[1]) == want[1];
}

/* Bit 63 set when x lies outside [lo, hi] (all three are at most 32 bits). */
#define MB_PF_OUTSIDE(x, lo, hi) ((((__u64)(x) - (__u64)(lo)) | ((__u64)(hi) - (__u64)(x))) & (1ULL << 63))

/*
 * Whether a rule matches. The header and L4 parts are computed without branches (every
 * difference ORed into one word, tested once): the verifier walks this body once per rule
 * slot, and a branch per field would multiply its paths by the rule count.
 */
static __always_inline int mb_pf_matches(struct xdp_md *ctx, const struct mb_pf_packet *p,
					 const struct mb_prefilter_rule *rule)
{
	__u64 differs = (p->facts & rule->facts_mask) ^ rule->facts_value;

	differs |= (__u64)((p->protocol ^ rule->protocol) & -(__u32)(rule->flags & MB_PF_R_PROTOCOL));
	differs |= (__u64)((p->saddr & rule->smask) ^ rule->saddr);
	differs |= (__u64)((p->daddr & rule->dmask) ^ rule->daddr);
	differs |= (__u64)((p->tcp_flags & rule->tcp_flags_mask) ^ rule->tcp_flags_value);
	differs |= MB_PF_OUTSIDE(p->ihl, rule->ihl_min, rule->ihl_max);
	differs |= MB_PF_OUTSIDE(p->ttl, rule->ttl_min, rule->ttl_max);
	differs |= MB_PF_OUTSIDE(p->tot_len, rule->tot_len_min, rule->tot_len_max);
	differs |= MB_PF_OUTSIDE(p->frag_off, rule->frag_off_min, rule->frag_off_max);
	differs |= MB_PF_OUTSIDE(p->sport, rule->sport_min, rule->sport_max);
	differs |= MB_PF_OUTSIDE(p->dport, rule->dport_min, rule->dport_max);
	differs |= MB_PF_OUTSIDE(p->tcp_doff, rule->tcp_doff_min, rule->tcp_doff_max);
	if (differs)
		return 0;
	if (rule->payload_len && !mb_pf_payload_matches(ctx, p, rule))
		return 0;
	return 1;
}

static __always_inline void mb_pf_count(__u32 ref, __u32 len, int dropped)
{
	struct mb_prefilter_counter *counter;

	if (ref >= MB_PREFILTER_REFS_MAX)
		return;
	counter = mb_prefilter_counters_v1.lookup(&ref);
	if (!counter)
		return;
	/* Per-CPU slot, XDP runs with preemption off: plain adds. */
	counter->packets += 1;
	counter->bytes += len;
	if (dropped) {
		counter->dropped_packets += 1;
		counter->dropped_bytes += len;
	}
}

/*
 * One token from the (rule, source) bucket, refilled at rate_pps and holding up to
 * rate_burst. Buckets are shared by the CPUs and updated without a lock: under concurrent
 * floods from one source the rate may be exceeded by a few packets (never undercut).
 */
static __always_inline int mb_pf_take_token(const struct mb_prefilter_rule *rule, __be32 saddr)
{
	__u64 now = bpf_ktime_get_ns();
	struct mb_prefilter_rate_key key = { .rule_ref = rule->rule_ref, .saddr = saddr };
	struct mb_prefilter_rate_value *bucket = mb_prefilter_rate_v1.lookup(&key);
	__u64 rate = rule->rate_pps ? rule->rate_pps : 1;
	__u64 cap = (__u64)(rule->rate_burst ? rule->rate_burst : 1) * MB_NANO;
	__u64 elapsed, tokens;

	if (!bucket) {
		struct mb_prefilter_rate_value fresh = { .last_ns = now, .nano_tokens = cap - MB_NANO };

		mb_prefilter_rate_v1.update(&key, &fresh);
		return 1;
	}
	elapsed = now - bucket->last_ns;
	if (elapsed >= cap / rate)
		tokens = cap;
	else
		tokens = bucket->nano_tokens + elapsed * rate;
	if (tokens > cap)
		tokens = cap;
	bucket->last_ns = now;
	if (tokens < MB_NANO) {
		bucket->nano_tokens = tokens;
		return 0;
	}
	bucket->nano_tokens = tokens - MB_NANO;
	return 1;
}

/* Count, report and drop. */
static __always_inline int mb_pf_drop(struct xdp_md *ctx, const struct mb_pf_packet *p, __u8 reason, __u32 ref)
{
	struct mb_ct_tuple4 tuple = {
		.saddr = p->saddr, .daddr = p->daddr, .sport = p->sport_be, .dport = p->dport_be,
		.nexthdr = p->protocol,
	};
	struct mb_flow_event *ev;

	mb_pf_count(ref, p->len, 1);
	mb_metrics_add(reason, MB_DIR_INGRESS, p->len);
	ev = mb_event_start(MB_EVENT_DROP, &tuple, p->tcp_flags, p->len, ctx->ingress_ifindex, MB_DIR_INGRESS);
	if (ev)
		ev->rule_ref = ref;
	mb_event_emit_drop(ev, reason);
	return XDP_DROP;
}

static __always_inline int mb_prefilter(struct xdp_md *ctx)
{
	struct mb_pf_packet *p;
	struct mb_prefilter_cidr_key cidr_key = { .prefixlen = 32 };
	struct mb_prefilter_cidr_value *denied;
	struct mb_prefilter_config *config;
	struct mb_prefilter_rule *rule;
	__u32 zero = 0, active, base, count, i, slot;

	/*
	 * The parsed packet lives in a per-CPU map value, not on the stack: the verifier does not
	 * track what a map value holds, so the parser's many paths (one per combination of facts)
	 * meet as one state at the rule loop instead of each walking it again.
	 */
	p = mb_pf_scratch.lookup(&zero);
	if (!p)
		return XDP_PASS;
	__builtin_memset(p, 0, sizeof(*p));
	mb_pf_parse(ctx, p);
	if (!p->ipv4)
		return XDP_PASS;
	if (!(p->facts & MB_PF_F_TRUNCATED)) {
		cidr_key.ip4 = p->saddr;
		denied = mb_prefilter_cidr_v1.lookup(&cidr_key);
		if (denied)
			return mb_pf_drop(ctx, p, MB_DROP_PREFILTER_DENY, denied->rule_ref);
	}
	config = mb_prefilter_config_v1.lookup(&zero);
	if (!config)
		return XDP_PASS;
	/* One load: the bank and its count always belong together (the agent writes them as one word). */
	active = *(volatile __u32 *)&config->active;
	/* Arithmetic, not a branch: two branches would have the verifier walk the loop twice. */
	base = (active >> 31) * MB_PREFILTER_RULES_MAX;
	count = active & MB_PF_ACTIVE_COUNT;
	for (i = 0; i < MB_PREFILTER_RULES_MAX; i++) {
		/* Opaque to clang: it would otherwise fold both bounds into one trip count that the
		 * verifier only knows as a range, and walk the loop far more often than it runs. */
		asm volatile("" : "+r"(count));
		if (i >= count)
			break;
		slot = base + i;
		rule = mb_prefilter_rules_v1.lookup(&slot);
		if (!rule)
			break;
		if (!mb_pf_matches(ctx, p, rule))
			continue;
		if (rule->action == MB_PF_ACTION_DROP)
			return mb_pf_drop(ctx, p, MB_DROP_PREFILTER_RULE, rule->rule_ref);
		if (rule->action == MB_PF_ACTION_RATE_LIMIT) {
			/* The clock is read per ratelimit rule, not carried across the loop: a value carried
			 * from one iteration to the next would double the verifier's paths per rule. */
			if (!mb_pf_take_token(rule, p->saddr))
				return mb_pf_drop(ctx, p, MB_DROP_PREFILTER_RATE, rule->rule_ref);
		}
		mb_pf_count(rule->rule_ref, p->len, 0);
	}
	return XDP_PASS;
}

#endif /* MB_LIB_PREFILTER_H */
