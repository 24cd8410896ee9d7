/* SPDX-License-Identifier: Apache-2.0 */
/*
 * events.h: flow events into the mb_events_v1 ring buffer, with a bounded cost.
 *
 * A flood must not turn into a flood of events (the agent would drown and
 * the ring would hide the interesting ones), so:
 *   - every event takes a token from a per-CPU bucket (MB_EVENTS_RATE per
 *     second, MB_EVENTS_BURST deep; the agent may override both at runtime);
 *   - drops are aggregated per (flow, reason, direction): at most one event
 *     per MB_EVENTS_AGGREGATE_MS, whose count says how many packets it
 *     stands for.
 * Whatever is not emitted is counted in mb_event_stats_v1. Events cost
 * nothing on established traffic: only new flows, closes and drops emit.
 * -DMB_EVENTS_OFF compiles them out; MB_EVENTS_F_DISABLED switches them off
 * at runtime.
 */
#ifndef MB_LIB_EVENTS_H
#define MB_LIB_EVENTS_H

#include "common.h"
#include "eth.h"
#include "ipv4.h"
#include "../maps.h"

#ifndef MB_EVENTS_RATE
#define MB_EVENTS_RATE 1000 /* events per second per CPU */
#endif
#ifndef MB_EVENTS_BURST
#define MB_EVENTS_BURST 2000
#endif
#ifndef MB_EVENTS_AGGREGATE_MS
#define MB_EVENTS_AGGREGATE_MS 1000
#endif

enum mb_event_stat {
	MB_EVENT_STAT_EMITTED,
	MB_EVENT_STAT_RATE_LIMITED,
	MB_EVENT_STAT_RINGBUF_FULL,
	MB_EVENT_STAT_AGGREGATED,
};

static __always_inline void mb_event_count(int which)
{
	__u32 zero = 0;
	struct mb_event_stats *stats = mb_event_stats_v1.lookup(&zero);

	if (!stats)
		return;
	/* Per-CPU value, preemption off in tc: plain adds. */
	switch (which) {
	case MB_EVENT_STAT_EMITTED:
		stats->emitted += 1;
		break;
	case MB_EVENT_STAT_RATE_LIMITED:
		stats->rate_limited += 1;
		break;
	case MB_EVENT_STAT_RINGBUF_FULL:
		stats->ringbuf_full += 1;
		break;
	default:
		stats->aggregated += 1;
		break;
	}
}

/* The config, or 0 when events are off (compiled out or switched off). */
static __always_inline struct mb_event_config *mb_events_on(void)
{
#ifdef MB_EVENTS_OFF
	return 0;
#else
	__u32 zero = 0;
	struct mb_event_config *cfg = mb_event_config_v1.lookup(&zero);

	if (!cfg || (cfg->flags & MB_EVENTS_F_DISABLED))
		return 0;
	return cfg;
#endif
}

#define MB_NANO 1000000000ULL

/* Token bucket per CPU. Refilling is elapsed_ns * rate nano-tokens, capped at burst tokens. */
static __always_inline int mb_event_take_token(const struct mb_event_config *cfg, __u64 now)
{
	__u32 zero = 0;
	struct mb_event_bucket *bucket = mb_event_bucket.lookup(&zero);
	__u64 rate = cfg->rate_per_sec ? cfg->rate_per_sec : MB_EVENTS_RATE;
	__u64 cap = (cfg->burst ? cfg->burst : MB_EVENTS_BURST) * MB_NANO;
	__u64 elapsed, tokens;

	if (!bucket)
		return 0;
	elapsed = now - bucket->last_ns;
	/* Compare before multiplying: a long idle time times the rate overflows. */
	if (elapsed >= cap / rate) {
		tokens = cap;
	} else {
		tokens = bucket->nano_tokens + elapsed * rate;
		if (tokens > cap)
			tokens = cap;
	}
	bucket->last_ns = now;
	if (tokens < MB_NANO) {
		bucket->nano_tokens = tokens;
		return 0;
	}
	bucket->nano_tokens = tokens - MB_NANO;
	return 1;
}

static __always_inline void mb_event_submit(const struct mb_event_config *cfg,
					    struct mb_flow_event *ev)
{
	int which = MB_EVENT_STAT_EMITTED;

	/* One counting site (compile time: each is a map lookup inlined). */
	if (!mb_event_take_token(cfg, ev->ts_ns))
		which = MB_EVENT_STAT_RATE_LIMITED;
	else if (mb_events_v1.ringbuf_output(ev, sizeof(*ev), 0) != 0)
		which = MB_EVENT_STAT_RINGBUF_FULL;
	mb_event_count(which);
}

/*
 * How many drops the next event of this (flow, reason, direction) stands
 * for, or 0 when it is too soon after the last one (the drop is then only
 * remembered in the flow's suppressed count).
 */
static __always_inline __u32 mb_event_aggregate(const struct mb_event_config *cfg,
						const struct mb_flow_event *ev)
{
	struct mb_event_agg_key key = {
		.tuple = {
			.saddr = ev->saddr,
			.daddr = ev->daddr,
			.sport = ev->sport,
			.dport = ev->dport,
			.nexthdr = ev->nexthdr,
		},
		.reason = ev->reason,
		.direction = ev->direction,
	};
	__u64 interval = (__u64)(cfg->aggregate_ms ? cfg->aggregate_ms : MB_EVENTS_AGGREGATE_MS) * 1000000ULL;
	struct mb_event_agg_value *agg = mb_event_agg.lookup(&key);
	__u32 suppressed;

	if (!agg) {
		struct mb_event_agg_value fresh = { .last_emit_ns = ev->ts_ns };

		mb_event_agg.update(&key, &fresh);
		return 1;
	}
	if (ev->ts_ns - agg->last_emit_ns < interval) {
		__sync_fetch_and_add(&agg->suppressed, 1);
		mb_event_count(MB_EVENT_STAT_AGGREGATED);
		return 0;
	}
	/* Subtract what we report rather than zeroing: other CPUs may add meanwhile. */
	suppressed = agg->suppressed;
	__sync_fetch_and_add(&agg->suppressed, -suppressed);
	agg->last_emit_ns = ev->ts_ns;
	return suppressed + 1;
}

/*
 * Start an event: the per-CPU scratch record filled with the packet facts,
 * or 0 when events are off (callers pass the 0 along; every emitter accepts
 * it). The record lives in a map, not on the stack (512 bytes for the
 * whole program, and the rest of the datapath needs it); tc programs never
 * nest on a CPU, so one record per CPU is enough.
 * is_reply, identities, endpoint and rule are the caller's to add.
 */
static __always_inline struct mb_flow_event *mb_event_start(__u8 type, const struct mb_ct_tuple4 *tuple,
							    __u8 tcp_flags, __u32 len, __u32 ifindex,
							    __u8 direction)
{
	__u32 zero = 0;
	struct mb_flow_event *ev;

	if (!mb_events_on())
		return 0;
	ev = mb_event_scratch.lookup(&zero);
	if (!ev)
		return 0;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->ts_ns = bpf_ktime_get_ns();
	ev->saddr = tuple->saddr;
	ev->daddr = tuple->daddr;
	ev->sport = tuple->sport;
	ev->dport = tuple->dport;
	ev->nexthdr = tuple->nexthdr;
	ev->type = type;
	ev->direction = direction;
	ev->tcp_flags = tcp_flags;
	ev->ifindex = ifindex;
	ev->len = len;
	ev->count = 1;
	return ev;
}

/* A forwarded event (TRACE_NEW, TRACE_END, allowed POLICY_VERDICT). */
static __always_inline void mb_event_emit(struct mb_flow_event *ev, __u8 type)
{
	struct mb_event_config *cfg;

	if (!ev || !(cfg = mb_events_on()))
		return;
	ev->type = type;
	ev->verdict = MB_VERDICT_FORWARDED;
	ev->reason = MB_FORWARDED;
	mb_event_submit(cfg, ev);
}

/*
 * A dropped packet: a DROP event, preceded by a denied POLICY_VERDICT when
 * policy was the reason. Both aggregated per flow.
 */
static __always_inline void mb_event_emit_drop(struct mb_flow_event *ev, __u8 reason)
{
	struct mb_event_config *cfg;
	__u32 count;
	__u8 type;

	if (!ev || !(cfg = mb_events_on()))
		return;
	ev->reason = reason;
	ev->verdict = MB_VERDICT_DROPPED;
	count = mb_event_aggregate(cfg, ev);
	if (!count)
		return;
	ev->count = count;
	type = reason == MB_DROP_POLICY_INGRESS || reason == MB_DROP_POLICY_EGRESS ?
	       MB_EVENT_POLICY_VERDICT : MB_EVENT_DROP;
	/* One submission site for both events (compile time: it is inlined). */
#pragma clang loop unroll(disable)
	for (;;) {
		ev->type = type;
		mb_event_submit(cfg, ev);
		if (type == MB_EVENT_DROP)
			break;
		type = MB_EVENT_DROP;
	}
}

/*
 * The event of a drop seen before the flow was understood (spoofing, bad
 * headers), or 0 when events are off: re-parse what can be parsed.
 * Not-IPv4 packets show up with zero addresses (and so share one
 * aggregation slot). For mb_event_emit_drop.
 */
static __always_inline struct mb_flow_event *mb_event_start_skb(struct __sk_buff *skb, __u8 direction,
								__u32 ifindex)
{
	struct mb_ct_tuple4 tuple = {};
	struct ethhdr *eth;
	struct iphdr *ip4;
	__u8 tcp_flags = 0;

	if (!mb_events_on())
		return 0;
	eth = mb_eth_header(skb);
	ip4 = eth && eth->h_proto == mb_htons(ETH_P_IP) ? mb_ipv4_header(skb) : 0;
	if (ip4)
		mb_ipv4_tuple(skb, ip4, &tuple, &tcp_flags);
	return mb_event_start(MB_EVENT_DROP, &tuple, tcp_flags, skb->len, ifindex, direction);
}

#endif /* MB_LIB_EVENTS_H */
