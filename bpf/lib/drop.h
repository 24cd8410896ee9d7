/* SPDX-License-Identifier: Apache-2.0 */
/*
 * drop.h: dropping a packet, counted and reported, from one place per program.
 *
 * The code of a hook returns either a tc verdict (>= 0) or a drop code made
 * by mb_drop()/mb_drop_flow() (< 0); the entry function hands it to
 * mb_finish(), which counts and reports the drop. Reporting (aggregation,
 * rate limiting, ring buffer) thus exists once per program: inlined at each
 * of the dozen drop sites (bcc cannot load BPF-to-BPF calls) it made the
 * programs 3x larger (6600 instead of 2300 instructions for from_container),
 * and the verifier's time with them.
 */
#ifndef MB_LIB_DROP_H
#define MB_LIB_DROP_H

#include "common.h"
#include "metrics.h"
#include "events.h"

#define MB_DROP_F_FLOW (1 << 16) /* the scratch event already describes the flow */

static __always_inline int mb_drop(__u8 reason, __u8 direction)
{
	return -(int)(reason | ((__u32)direction << 8));
}

/* A drop whose flow facts the caller put in the scratch event ev (0 when events are off). */
static __always_inline int mb_drop_flow(struct mb_flow_event *ev, __u8 reason, __u8 direction)
{
	if (!ev)
		return mb_drop(reason, direction);
	ev->direction = direction;
	return -(int)(reason | ((__u32)direction << 8) | MB_DROP_F_FLOW);
}

/* ifindex: the host-side veth the packet was seen on (for the event). */
static __always_inline int mb_finish(struct __sk_buff *skb, int verdict, __u32 ifindex)
{
	__u32 code, zero = 0;
	__u8 reason, direction;

	if (verdict >= 0)
		return verdict;
	code = -verdict;
	reason = code & 0xff;
	direction = (code >> 8) & 0xff;
	mb_metrics_add(reason, direction, skb->len);
	/* One emitting call site per program (each is a whole aggregation and
	 * submission inlined): the flow's scratch event, or one made from the packet. */
	mb_event_emit_drop(code & MB_DROP_F_FLOW ? mb_event_scratch.lookup(&zero) :
			   mb_event_start_skb(skb, direction, ifindex), reason);
	return TC_ACT_SHOT;
}

#endif /* MB_LIB_DROP_H */
