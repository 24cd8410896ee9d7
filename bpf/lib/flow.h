/* SPDX-License-Identifier: Apache-2.0 */
/*
 * flow.h: the verdict on a connection's first packet and the close event,
 * shared by every hook that delivers to or sends from a pod (bpf_lxc.c for
 * the pod veths, bpf_overlay.c for packets arriving through the tunnel).
 *
 * Policy is judged on the first packet of a connection (conntrack miss);
 * conntrack carries the rest, replies included, until the policy revision
 * changes: then the flow's next packet has it judged again
 * (mb_flow_recheck), as its first packet would be judged now.
 */
#ifndef MB_LIB_FLOW_H
#define MB_LIB_FLOW_H

#include "common.h"
#include "../types.h"
#include "../maps.h"
#include "conntrack.h"
#include "endpoints.h"
#include "ipcache.h"
#include "policy.h"
#include "events.h"
#include "drop.h"

/* Record which endpoint's policy decided, in the event being built (if any). */
static __always_inline void mb_event_policy(struct mb_flow_event *ev, __u16 endpoint_id,
					    __u32 rule_ref, __u8 direction)
{
	if (!ev)
		return;
	ev->endpoint_id = endpoint_id;
	ev->rule_ref = rule_ref;
	ev->direction = direction;
}

/*
 * A packet without a conntrack entry: the first of a connection, or an
 * untracked one (judged alone). Egress policy of the sending endpoint, then
 * ingress policy of the receiving one (either may be absent: the host or
 * the outside), then a conntrack entry remembering that the flow is allowed.
 * The facts come in a struct mb_flow_facts (named fields, not a dozen positional
 * arguments that are easy to swap); the function is inlined, so the struct
 * costs nothing at run time.
 * Returns 0 to forward, or a drop code (mb_drop_flow).
 */
struct mb_flow_facts {
	const struct mb_ct_tuple4 *tuple;
	int l4;                                /* MB_L4_*: only MB_L4_TRACKED gets an entry */
	__u8 tcp_flags;
	__u8 hook_dir;                         /* direction of the hook we run in */
	const struct mb_endpoint_info *egress_ep;  /* sending local pod, judged on egress (or 0) */
	const struct mb_endpoint_info *ingress_ep; /* receiving local pod, judged on ingress (or 0) */
	const struct mb_endpoint_info *hook_ep;    /* the endpoint of the veth we run on (0: the tunnel, for the node's own packets) */
	__u32 src_identity, dst_identity;
	/* CIDR identities of the addresses (lib/ipcache.h), each judged with the
	 * peer's identity (0: none; only read by the side judging). */
	__u32 src_cidr, dst_cidr;
	__u32 ifindex;                         /* reported in events */
	__u16 ct_flags;                        /* MB_CT_F_* the new entry starts with (MB_CT_F_VIA_STACK) */
	__u8 path;                             /* MB_PATH_* the flow's packets take, for its events */
};

static __always_inline int mb_flow_new(struct __sk_buff *skb, const struct mb_flow_facts *f)
{
	const struct mb_ct_tuple4 *tuple = f->tuple;
	const struct mb_endpoint_info *egress_ep = f->egress_ep, *ingress_ep = f->ingress_ep;
	__u32 src_identity = f->src_identity, dst_identity = f->dst_identity;
	__u32 src_cidr = f->src_cidr, dst_cidr = f->dst_cidr, ifindex = f->ifindex;
	__u8 tcp_flags = f->tcp_flags, hook_dir = f->hook_dir;
	int l4 = f->l4;
	struct mb_flow_event *ev;
	__u16 policy_flags = f->ct_flags;
	/* Read before judging: a revision bumped meanwhile makes the next
	 * packet judge the flow again, against maps that are complete. */
	__u32 rule_ref, policy_rev = mb_policy_revision();

	ev = mb_event_start(MB_EVENT_POLICY_VERDICT, tuple, tcp_flags, skb->len, ifindex, hook_dir);
	if (ev) {
		ev->src_identity = src_identity;
		ev->dst_identity = dst_identity;
		ev->path = f->path;
	}

	/* Egress of the sender, then ingress of the receiver: one loop, not two
	 * copies of the judging and of the event submission (compile time). */
#pragma clang loop unroll(disable)
	for (int side = 0; side < 2; side++) {
		const struct mb_endpoint_info *ep = side ? ingress_ep : egress_ep;
		__u8 direction = side ? MB_DIR_INGRESS : MB_DIR_EGRESS;
		int verdict;

		if (!ep)
			continue;
		verdict = mb_policy_judge(ep->endpoint_id, direction, side ? src_identity : dst_identity,
					  side ? src_cidr : dst_cidr, tuple, &rule_ref);
		mb_event_policy(ev, ep->endpoint_id, rule_ref, direction);
		if (verdict != MB_POLICY_ALLOW)
			return mb_drop_flow(ev, side ? MB_DROP_POLICY_INGRESS : MB_DROP_POLICY_EGRESS, direction);
		mb_event_emit(ev, MB_EVENT_POLICY_VERDICT);
		policy_flags |= side ? MB_CT_F_POLICY_INGRESS : MB_CT_F_POLICY_EGRESS;
	}

	mb_event_policy(ev, f->hook_ep ? f->hook_ep->endpoint_id : 0, 0, hook_dir);
	if (l4 != MB_L4_TRACKED)
		return 0;
	if (mb_ct_create(tuple, tcp_flags, skb->len, src_identity, dst_identity, policy_flags,
			 policy_rev) < 0)
		return mb_drop_flow(ev, MB_DROP_CT_CREATE_FAILED, hook_dir);
	mb_event_emit(ev, MB_EVENT_TRACE_NEW);
	return 0;
}

/* A local pod's endpoint entry for ip4, or 0 (the host, another node, the outside). */
static __always_inline struct mb_endpoint_info *mb_local_pod(__be32 ip4)
{
	struct mb_endpoint_info *ep = mb_lookup_endpoint(ip4);

	return ep && mb_endpoint_is_local_pod(ep) ? ep : 0;
}

/* Drop a packet of a known flow the current policy denies: the entry remembers the
 * denial (MB_CT_F_DENIED_*) until the policy changes again. */
static __always_inline int mb_flow_deny(struct __sk_buff *skb, const struct mb_ct_tuple4 *tuple,
					    int ct, __u8 tcp_flags, struct mb_ct_entry *entry,
					    __u16 endpoint_id, __u32 rule_ref, __u8 direction,
					    __u32 src_identity, __u32 dst_identity, __u32 policy_rev,
					    __u8 hook_dir, __u32 ifindex)
{
	struct mb_flow_event *ev;
	__u16 flags = entry->flags & ~(MB_CT_F_POLICY_EGRESS | MB_CT_F_POLICY_INGRESS | MB_CT_F_DENIED);

	entry->flags = flags | (direction == MB_DIR_EGRESS ? MB_CT_F_DENIED_EGRESS : MB_CT_F_DENIED_INGRESS);
	entry->lifetime_s = mb_ct_lifetime(tuple->nexthdr, entry->flags);
	entry->policy_rev = policy_rev;
	ev = mb_event_start(MB_EVENT_POLICY_VERDICT, tuple, tcp_flags, skb->len, ifindex, hook_dir);
	if (ev) {
		ev->is_reply = ct == MB_CT_REPLY;
		ev->src_identity = ev->is_reply ? dst_identity : src_identity;
		ev->dst_identity = ev->is_reply ? src_identity : dst_identity;
	}
	mb_event_policy(ev, endpoint_id, rule_ref, direction);
	return mb_drop_flow(ev, direction == MB_DIR_EGRESS ? MB_DROP_POLICY_EGRESS : MB_DROP_POLICY_INGRESS,
			    direction);
}

/*
 * A packet of a known flow (ct: MB_CT_ESTABLISHED or MB_CT_REPLY, entry its
 * conntrack entry). If the policy changed since the flow was judged, judge
 * it again as its first packet would be judged now: egress of the initiator
 * if it is a local pod, ingress of the responder if it is one, identities
 * from the endpoints map and the ipcache (a peer the ipcache does not know
 * keeps the identity it was judged with, e.g. the VNI's of a pod another
 * node just started). Allowed: the entry takes the current revision.
 * Denied: the packet is dropped with the policy reason and the entry marked
 * denied, so every later packet of the flow, either way, is dropped too
 * until the policy changes again (the entry is kept rather than deleted:
 * else the responder's next packet would open the flow anew, judged as a
 * connection of its own). Returns 0 or a drop code. One array lookup per
 * packet while nothing changes.
 */
static __always_inline int mb_flow_recheck(struct __sk_buff *skb, const struct mb_ct_tuple4 *tuple,
					       int ct, __u8 tcp_flags, struct mb_ct_entry *entry,
					       __u8 hook_dir, __u32 ifindex)
{
	struct mb_ct_tuple4 orig = {};
	struct mb_endpoint_info *src, *dst, *denied;
	struct mb_ipcache_value *cached;
	__u32 rule_ref, src_identity, dst_identity, policy_rev = mb_policy_revision();
	__u16 policy_flags = 0;
	__u8 direction;
	int verdict;

	if (!entry)
		return 0;
	if (entry->policy_rev == policy_rev) {
		if (entry->flags & MB_CT_F_DENIED_EGRESS)
			return mb_drop(MB_DROP_POLICY_EGRESS, MB_DIR_EGRESS);
		if (entry->flags & MB_CT_F_DENIED_INGRESS)
			return mb_drop(MB_DROP_POLICY_INGRESS, MB_DIR_INGRESS);
		return 0;
	}
	if (ct == MB_CT_REPLY) {
		mb_ct_reverse(tuple, &orig);
	} else {
		orig.saddr = tuple->saddr;
		orig.daddr = tuple->daddr;
		orig.sport = tuple->sport;
		orig.dport = tuple->dport;
		orig.nexthdr = tuple->nexthdr;
	}
	src = mb_local_pod(orig.saddr);
	dst = mb_local_pod(orig.daddr);
	if (src) {
		src_identity = src->sec_identity;
	} else {
		cached = mb_ipcache_lookup(orig.saddr);
		src_identity = cached ? cached->sec_identity : entry->src_identity;
	}
	if (dst) {
		dst_identity = dst->sec_identity;
	} else {
		cached = mb_ipcache_lookup(orig.daddr);
		dst_identity = cached ? cached->sec_identity : entry->dst_identity;
	}
	if (src) {
		verdict = mb_policy_judge(src->endpoint_id, MB_DIR_EGRESS, dst_identity,
					  mb_cidr_identity(orig.daddr), &orig, &rule_ref);
		if (verdict != MB_POLICY_ALLOW) {
			denied = src;
			direction = MB_DIR_EGRESS;
			goto deny;
		}
		policy_flags |= MB_CT_F_POLICY_EGRESS;
	}
	if (dst) {
		verdict = mb_policy_judge(dst->endpoint_id, MB_DIR_INGRESS, src_identity,
					  mb_cidr_identity(orig.saddr), &orig, &rule_ref);
		if (verdict != MB_POLICY_ALLOW) {
			denied = dst;
			direction = MB_DIR_INGRESS;
			goto deny;
		}
		policy_flags |= MB_CT_F_POLICY_INGRESS;
	}
	entry->flags = (entry->flags & ~(MB_CT_F_POLICY_EGRESS | MB_CT_F_POLICY_INGRESS | MB_CT_F_DENIED)) |
		       policy_flags;
	entry->lifetime_s = mb_ct_lifetime(orig.nexthdr, entry->flags);
	entry->policy_rev = policy_rev;
	entry->src_identity = src_identity;
	entry->dst_identity = dst_identity;
	return 0;
deny:
	/* One call site (compile time: it builds an event). */
	return mb_flow_deny(skb, tuple, ct, tcp_flags, entry, denied->endpoint_id, rule_ref, direction,
			    src_identity, dst_identity, policy_rev, hook_dir, ifindex);
}

/*
 * Conntrack classification of a parsed IPv4 packet, the same in every hook:
 * a malformed L4 header is dropped; TCP/UDP are looked up (ct, closed, entry
 * set); an ICMP error about a known flow is MB_CT_RELATED; a packet of a
 * known flow has the flow judged again if the policy changed (mb_flow_recheck).
 * *ct stays MB_CT_NEW for a first packet or an untracked one.
 * Returns 0 to go on, or a drop code.
 */
static __always_inline int mb_flow_classify(struct __sk_buff *skb, struct iphdr *ip4,
					    const struct mb_ct_tuple4 *tuple, int l4, __u8 tcp_flags,
					    __u32 bytes, __u8 dir, __u32 ifindex, int *ct, __u8 *closed,
					    struct mb_ct_entry **entry)
{
	if (l4 == MB_L4_INVALID)
		return mb_drop(MB_DROP_INVALID_PACKET, dir);
	if (l4 == MB_L4_TRACKED)
		*ct = mb_ct_lookup(tuple, tcp_flags, bytes, closed, entry);
	else if (tuple->nexthdr == MB_IPPROTO_ICMP && mb_ct_icmp_related(skb, ip4))
		*ct = MB_CT_RELATED;
	if (*ct == MB_CT_ESTABLISHED || *ct == MB_CT_REPLY)
		return mb_flow_recheck(skb, tuple, *ct, tcp_flags, *entry, dir, ifindex);
	return 0;
}

/* The packet that completed the close of a connection: TRACE_END. */
static __always_inline void mb_flow_trace_end(struct __sk_buff *skb, const struct mb_ct_tuple4 *tuple,
					     __u8 tcp_flags, int ct, const struct mb_ct_entry *entry,
					     const struct mb_endpoint_info *hook_ep, __u8 hook_dir,
					     __u32 ifindex)
{
	struct mb_flow_event *ev;

	if (!entry)
		return;
	ev = mb_event_start(MB_EVENT_TRACE_END, tuple, tcp_flags, skb->len, ifindex, hook_dir);
	if (!ev)
		return;
	ev->is_reply = ct == MB_CT_REPLY;
	/* Identities of this packet's source and destination, not the flow's. */
	ev->src_identity = ev->is_reply ? entry->dst_identity : entry->src_identity;
	ev->dst_identity = ev->is_reply ? entry->src_identity : entry->dst_identity;
	ev->endpoint_id = hook_ep->endpoint_id;
	mb_event_emit(ev, MB_EVENT_TRACE_END);
}

#endif /* MB_LIB_FLOW_H */
