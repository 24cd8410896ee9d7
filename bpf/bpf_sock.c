/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bpf_sock.c: cgroup v2 socket hooks, the ClusterIP load balancer.
 *
 * A connect() or sendmsg() to a service frontend is sent to a backend by
 * rewriting the socket's destination before the kernel uses it, so the
 * packets of the connection carry the backend's address from the first
 * one on: no per-packet NAT, and conntrack, policy and flows all see the
 * real backend pod. UDP replies (recvmsg) and getpeername() show the
 * frontend again, from a per-socket record (mb_lb4_sock_v1). A frontend
 * with no usable backend fails the call with ECONNREFUSED at once.
 *
 * The agent attaches these to --cgroup-root (the node's cgroup v2 root in
 * a cluster, so pods and node processes alike), never per pod.
 */
#include "lib/common.h"
#include "types.h"
#include "maps.h"
#include "lib/l4.h"
#include "lib/events.h"
#include "lib/lb.h"

#define MB_SOCK_ALLOW 1
#define MB_SOCK_REJECT 0
#define MB_ECONNREFUSED 111

/* bcc declares the helper as returning u32: the cookie is 64 bits. */
static __u64 (*mb_socket_cookie)(void *ctx) = (void *)BPF_FUNC_get_socket_cookie;

/* A TRANSLATION event, built on the stack: these hooks run preemptible in process context,
 * where the per-CPU scratch record of the tc programs could be taken mid-build. */
static __always_inline void mb_sock_event(struct bpf_sock_addr *ctx, const struct mb_lb4_key *key,
					  const struct mb_lb4_backend *backend, __u16 rev_nat_index)
{
	struct mb_flow_event ev = {};
	struct mb_event_config *cfg = mb_events_on();

	if (!cfg)
		return;
	ev.ts_ns = bpf_ktime_get_ns();
	ev.saddr = key->address;
	ev.sport = key->dport;
	ev.nexthdr = key->proto;
	ev.type = MB_EVENT_TRANSLATION;
	ev.direction = MB_DIR_EGRESS;
	ev.rule_ref = rev_nat_index;
	ev.count = 1;
	ev.netns_cookie = bpf_get_netns_cookie(ctx);
	if (backend) {
		ev.daddr = backend->address;
		ev.dport = backend->port;
		ev.verdict = MB_VERDICT_FORWARDED;
		ev.reason = MB_FORWARDED;
	} else {
		ev.verdict = MB_VERDICT_DROPPED;
		ev.reason = MB_DROP_NO_SERVICE_BACKEND;
	}
	mb_event_submit(cfg, &ev);
}

/* connect() and sendmsg(): frontend -> backend. `sendmsg` is 1 for unconnected UDP. */
static __always_inline int mb_sock4_forward(struct bpf_sock_addr *ctx, int sendmsg)
{
	struct mb_lb4_key key = {};
	struct mb_lb4_service *svc;
	struct mb_lb4_backend *backend;
	__u32 backend_id = 0;
	__u64 cookie;
	__u8 proto = (__u8)ctx->protocol;

	if (proto != MB_IPPROTO_TCP && proto != MB_IPPROTO_UDP)
		return MB_SOCK_ALLOW;
	key.address = ctx->user_ip4;
	key.dport = (__be16)ctx->user_port;
	key.proto = proto;
	svc = mb_lb4_lookup_internal(&key);
	/* Not a frontend (the common case: one lookup), or one only the per-packet path serves. */
	if (!svc || (svc->flags & MB_LB_F_NODE_PORT))
		return MB_SOCK_ALLOW;
	if (!svc->count) {
		mb_lb_count(MB_LB_STAT_REFUSED);
		mb_sock_event(ctx, &key, 0, svc->rev_nat_index);
		bpf_set_retval(-MB_ECONNREFUSED);
		return MB_SOCK_REJECT;
	}
	cookie = mb_socket_cookie(ctx);
	backend = mb_lb4_select(&key, svc, bpf_get_netns_cookie(ctx), MB_LB_CLIENT_NETNS, cookie, sendmsg,
				&backend_id);
	if (!backend) {
		/* A slot without its backend: the agent's write order rules it out. Refused rather
		 * than sent to the frontend address, which nothing answers. */
		mb_lb_count(MB_LB_STAT_FAILED);
		mb_sock_event(ctx, &key, 0, svc->rev_nat_index);
		bpf_set_retval(-MB_ECONNREFUSED);
		return MB_SOCK_REJECT;
	}
	mb_lb4_remember_sock(cookie, backend, &key, svc->rev_nat_index);
	ctx->user_ip4 = backend->address;
	ctx->user_port = (__u32)backend->port;
	mb_lb_count(MB_LB_STAT_TRANSLATED);
	/* Unconnected UDP calls this per datagram: one event per socket and backend would need
	 * state; the first datagram's record above is what flows correlate with. */
	if (!sendmsg)
		mb_sock_event(ctx, &key, backend, svc->rev_nat_index);
	return MB_SOCK_ALLOW;
}

/* recvmsg() and getpeername(): backend -> the frontend the socket asked for. */
static __always_inline int mb_sock4_reverse(struct bpf_sock_addr *ctx, __u8 proto)
{
	struct mb_lb4_sock_value *front;

	if (proto != MB_IPPROTO_TCP && proto != MB_IPPROTO_UDP)
		return MB_SOCK_ALLOW;
	front = mb_lb4_sock_frontend(mb_socket_cookie(ctx), ctx->user_ip4, (__be16)ctx->user_port, proto);
	if (front) {
		ctx->user_ip4 = front->address;
		ctx->user_port = (__u32)front->port;
		mb_lb_count(MB_LB_STAT_REVERSED);
	}
	return MB_SOCK_ALLOW;
}

/*
 * Hook: cgroup/connect4 (BPF_CGROUP_INET4_CONNECT) on --cgroup-root.
 * TCP connect() and UDP connect() of every process below it.
 */
int mb_sock4_connect(struct bpf_sock_addr *ctx)
{
	return mb_sock4_forward(ctx, 0);
}

/*
 * Hook: cgroup/sendmsg4 (BPF_CGROUP_UDP4_SENDMSG) on --cgroup-root.
 * UDP sendmsg()/sendto() with a destination address (unconnected sockets).
 */
int mb_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return mb_sock4_forward(ctx, 1);
}

/*
 * Hook: cgroup/recvmsg4 (BPF_CGROUP_UDP4_RECVMSG) on --cgroup-root.
 * The source address a UDP recvmsg()/recvfrom() reports.
 */
int mb_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return mb_sock4_reverse(ctx, MB_IPPROTO_UDP);
}

/*
 * Hook: cgroup/getpeername4 (BPF_CGROUP_INET4_GETPEERNAME) on --cgroup-root.
 * The peer a connected TCP or UDP socket reports.
 */
int mb_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return mb_sock4_reverse(ctx, (__u8)ctx->protocol);
}
