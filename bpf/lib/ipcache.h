/* SPDX-License-Identifier: Apache-2.0 */
/* ipcache.h: IPv4 address -> security identity and CIDR identity (longest prefix match). */
#ifndef MB_LIB_IPCACHE_H
#define MB_LIB_IPCACHE_H

#include "common.h"
#include "../maps.h"

/* The longest prefix entry covering ip4, or 0. */
static __always_inline struct mb_ipcache_value *mb_ipcache_lookup(__be32 ip4)
{
	struct mb_ipcache_key key = { .prefixlen = 32, .ip4 = ip4 };

	return mb_ipcache_v1.lookup(&key);
}

/* Anything the agent did not describe is the outside world. */
static __always_inline __u32 mb_ipcache_identity(__be32 ip4)
{
	struct mb_ipcache_value *value = mb_ipcache_lookup(ip4);

	return value ? value->sec_identity : MB_IDENTITY_WORLD;
}

/*
 * The CIDR identity of ip4: its longest ipBlock prefix (mb_cidr_v1), else
 * WORLD (what a /0 ipBlock selects). Judged alongside the peer's identity,
 * so that ipBlocks select pod (and node) addresses too.
 */
static __always_inline __u32 mb_cidr_identity(__be32 ip4)
{
	struct mb_cidr_key key = { .prefixlen = 32, .ip4 = ip4 };
	struct mb_cidr_value *value = mb_cidr_v1.lookup(&key);

	return value ? value->sec_identity : MB_IDENTITY_WORLD;
}

/*
 * The CIDR identity of ip4, given its ipcache entry `cached` (0: none). The
 * ipcache holds every ipBlock prefix too, so when its longest match is no
 * pod or node entry (a CIDR identity, or a miss: WORLD) that answer already
 * is the CIDR identity: only pod and node addresses cost a second lookup.
 */
static __always_inline __u32 mb_cidr_identity_of(__be32 ip4, const struct mb_ipcache_value *cached)
{
	if (!cached)
		return MB_IDENTITY_WORLD;
	if (cached->sec_identity & MB_IDENTITY_LOCAL_FLAG)
		return cached->sec_identity;
	return mb_cidr_identity(ip4);
}

#endif /* MB_LIB_IPCACHE_H */
