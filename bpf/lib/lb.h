/* SPDX-License-Identifier: Apache-2.0 */
/*
 * lb.h: service load balancing on the maps of types.h "load balancing":
 * find a frontend, pick a backend (ClientIP affinity, the backend an
 * unconnected UDP socket already uses, else random), remember reverse
 * translations. Shared by the socket hooks (bpf_sock.c) and, later, the
 * per-packet path; no packet or socket access in here.
 */
#ifndef MB_LIB_LB_H
#define MB_LIB_LB_H

#include "common.h"
#include "l4.h"
#include "../maps.h"

#define MB_LB_NSEC 1000000000ULL

static __always_inline void mb_lb_count(__u32 which)
{
	struct mb_lb_stats *stats = mb_lb_stats_v1.lookup(&which);

	/* Socket hooks run preemptible: an atomic add, even on a per-CPU slot. */
	if (stats)
		__sync_fetch_and_add(&stats->count, 1);
}

/*
 * The master entry of a frontend for this node's own traffic, or 0 when
 * (address, port, proto) is no frontend. key is left pointing at it
 * (slot 0, the scope that holds the slots).
 */
static __always_inline struct mb_lb4_service *mb_lb4_lookup_internal(struct mb_lb4_key *key)
{
	struct mb_lb4_service *svc;

	key->slot = 0;
	key->scope = MB_LB_SCOPE_EXTERNAL;
	svc = mb_lb4_services_v1.lookup(key);
	if (!svc || !(svc->flags & MB_LB_F_TWO_SCOPES))
		return svc;
	key->scope = MB_LB_SCOPE_INTERNAL;
	return mb_lb4_services_v1.lookup(key);
}

/* Does backend_id still serve the frontend? (a remembered choice is kept only then) */
static __always_inline struct mb_lb4_backend *mb_lb4_member_backend(__u32 backend_id, __u16 rev_nat_index)
{
	struct mb_lb4_member_key member = { .backend_id = backend_id, .rev_nat_index = rev_nat_index };
	struct mb_lb4_backend_key bkey = { .backend_id = backend_id };

	if (!backend_id || !mb_lb4_members_v1.lookup(&member))
		return 0;
	return mb_lb4_backends_v1.lookup(&bkey);
}

/* The backend of slot (hash % count) + 1. */
static __always_inline struct mb_lb4_backend *mb_lb4_slot_backend(struct mb_lb4_key *key,
								   const struct mb_lb4_service *svc,
								   __u32 hash, __u32 *backend_id)
{
	struct mb_lb4_backend_key bkey = {};
	struct mb_lb4_service *slot;
	struct mb_lb4_backend *backend;
	__u16 master_slot = key->slot;

	key->slot = (__u16)(hash % svc->count) + 1;
	slot = mb_lb4_services_v1.lookup(key);
	key->slot = master_slot;
	if (!slot)
		return 0;
	bkey.backend_id = slot->backend_id;
	backend = mb_lb4_backends_v1.lookup(&bkey);
	if (backend)
		*backend_id = slot->backend_id;
	return backend;
}

/*
 * Pick a backend for a new connection (or datagram) of `client`
 * (client_kind MB_LB_CLIENT_*) to the frontend of `key`/`svc` (count > 0).
 * ClientIP affinity is per client and frontend, for affinity_timeout_s
 * since its last use; `remember` (an unconnected UDP socket) keeps the
 * socket on its backend while that backend serves the frontend.
 */
static __always_inline struct mb_lb4_backend *mb_lb4_select(struct mb_lb4_key *key,
							     const struct mb_lb4_service *svc,
							     __u64 client, __u8 client_kind,
							     __u64 socket_cookie, int remember,
							     __u32 *backend_id)
{
	struct mb_lb4_affinity_key akey = { .rev_nat_index = svc->rev_nat_index };
	struct mb_lb4_affinity *seen, fresh = {};
	struct mb_lb4_backend *backend;
	__u64 now = bpf_ktime_get_ns();
	int affinity = svc->flags & MB_LB_F_AFFINITY;

	if (affinity) {
		akey.client = client;
		akey.client_kind = client_kind;
	} else if (remember) {
		akey.client = socket_cookie;
		akey.client_kind = MB_LB_CLIENT_SOCKET;
	}
	if (affinity || remember) {
		seen = mb_lb4_affinity_v1.lookup(&akey);
		if (seen && (!affinity || now - seen->last_used_ns <= (__u64)svc->affinity_timeout_s * MB_LB_NSEC)) {
			backend = mb_lb4_member_backend(seen->backend_id, svc->rev_nat_index);
			if (backend) {
				*backend_id = seen->backend_id;
				if (affinity) {
					seen->last_used_ns = now;
					mb_lb_count(MB_LB_STAT_AFFINITY_HIT);
				}
				return backend;
			}
		}
	}
	backend = mb_lb4_slot_backend(key, svc, bpf_get_prandom_u32(), backend_id);
	if (backend && (affinity || remember)) {
		fresh.last_used_ns = now;
		fresh.backend_id = *backend_id;
		mb_lb4_affinity_v1.update(&akey, &fresh);
	}
	return backend;
}

/* Remember how to show a socket's peer as the frontend again (recvmsg, getpeername). */
static __always_inline void mb_lb4_remember_sock(__u64 cookie, const struct mb_lb4_backend *backend,
						 const struct mb_lb4_key *frontend, __u16 rev_nat_index)
{
	struct mb_lb4_sock_key skey = {
		.cookie = cookie, .address = backend->address, .port = backend->port, .proto = frontend->proto,
	};
	struct mb_lb4_sock_value want = {
		.address = frontend->address, .port = frontend->dport, .rev_nat_index = rev_nat_index,
	};
	struct mb_lb4_sock_value *have = mb_lb4_sock_v1.lookup(&skey);

	/* Every datagram of an unconnected socket passes here: write only what changed. */
	if (have && have->address == want.address && have->port == want.port &&
	    have->rev_nat_index == want.rev_nat_index)
		return;
	mb_lb4_sock_v1.update(&skey, &want);
}

/*
 * The frontend a socket's peer (address, port) stands for, or 0. The
 * frontend must still exist under the same id (a deleted Service's replies
 * keep the backend's address).
 */
static __always_inline struct mb_lb4_sock_value *mb_lb4_sock_frontend(__u64 cookie, __be32 address,
								       __be16 port, __u8 proto)
{
	struct mb_lb4_sock_key skey = { .cookie = cookie, .address = address, .port = port, .proto = proto };
	struct mb_lb4_sock_value *front = mb_lb4_sock_v1.lookup(&skey);
	struct mb_lb4_rev_nat_key rkey = {};
	struct mb_lb4_rev_nat *rev;

	if (!front)
		return 0;
	rkey.rev_nat_index = front->rev_nat_index;
	rev = mb_lb4_rev_nat_v1.lookup(&rkey);
	if (!rev || rev->address != front->address || rev->port != front->port)
		return 0;
	return front;
}

#endif /* MB_LIB_LB_H */
