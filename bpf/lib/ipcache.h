/* SPDX-License-Identifier: Apache-2.0 */
/* ipcache.h: IPv4 address -> security identity (longest prefix match). */
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

#endif /* MB_LIB_IPCACHE_H */
