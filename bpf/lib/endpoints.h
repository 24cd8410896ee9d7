/* SPDX-License-Identifier: Apache-2.0 */
/* endpoints.h: lookups in the endpoints map. */
#ifndef MB_LIB_ENDPOINTS_H
#define MB_LIB_ENDPOINTS_H

#include "common.h"
#include "../maps.h"

static __always_inline struct mb_endpoint_info *mb_lookup_endpoint(__be32 ip4)
{
	struct mb_endpoint_key key = { .ip4 = ip4 };

	return mb_endpoints_v1.lookup(&key);
}

/* A pod of this node we can redirect to (not the reserved host entry). */
static __always_inline int mb_endpoint_is_local_pod(const struct mb_endpoint_info *ep)
{
	return ep->ifindex != 0 && !(ep->flags & MB_ENDPOINT_F_HOST);
}

#endif /* MB_LIB_ENDPOINTS_H */
