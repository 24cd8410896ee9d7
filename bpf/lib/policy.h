/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy.h: the verdict of an endpoint's policy for a new connection.
 *
 * membrane/policy/flattening.py (lookup_flat) is the executable model of
 * this file: longest-prefix lookups for the peer's identity, for the peer
 * address's CIDR identity (when it differs: ipBlocks select pods by their
 * address, not their identity) and for "any peer"; a DENY from any of them
 * wins, else an ALLOW from any of them allows, else the connection is
 * dropped (no entry = drop: endpoints no policy isolates get an explicit
 * allow-all entry from the agent).
 */
#ifndef MB_LIB_POLICY_H
#define MB_LIB_POLICY_H

#include "common.h"
#include "l4.h"
#include "../maps.h"

/* endpoint_id + identity + direction + protocol + port: every bit of the key. */
#define MB_POLICY_PREFIX_FULL (32 + 32 + 8 + 8 + 16)

/* Policy ports exist for TCP, UDP and SCTP only; ICMP and the rest match port 0. */
static __always_inline __be16 mb_policy_port(const struct mb_ct_tuple4 *tuple)
{
	switch (tuple->nexthdr) {
	case MB_IPPROTO_TCP:
	case MB_IPPROTO_UDP:
	case MB_IPPROTO_SCTP:
		return tuple->dport;
	default:
		return 0;
	}
}

/*
 * Returns enum mb_policy_verdict; *rule_ref tells which rules decided (0 if
 * none). cidr_identity: the CIDR identity of the peer's address (0: none).
 * Precedence among equal verdicts: peer, then CIDR, then any peer.
 */
static __always_inline int mb_policy_judge(__u32 endpoint_id, __u8 direction, __u32 identity,
					   __u32 cidr_identity, const struct mb_ct_tuple4 *tuple,
					   __u32 *rule_ref)
{
	struct mb_policy_key key = {
		.prefixlen = MB_POLICY_PREFIX_FULL,
		.endpoint_id = endpoint_id,
		.identity = identity,
		.direction = direction,
		.protocol = tuple->nexthdr,
		.dport = mb_policy_port(tuple),
	};
	struct mb_policy_value *peer, *cidr = 0, *any = 0;

	peer = mb_policy_v1.lookup(&key);
	if (cidr_identity != MB_IDENTITY_ANY && cidr_identity != identity) {
		key.identity = cidr_identity;
		cidr = mb_policy_v1.lookup(&key);
	}
	if (identity != MB_IDENTITY_ANY) {
		key.identity = MB_IDENTITY_ANY;
		any = mb_policy_v1.lookup(&key);
	}
	if (peer && peer->verdict == MB_POLICY_DENY) {
		*rule_ref = peer->rule_ref;
		return MB_POLICY_DENY;
	}
	if (cidr && cidr->verdict == MB_POLICY_DENY) {
		*rule_ref = cidr->rule_ref;
		return MB_POLICY_DENY;
	}
	if (any && any->verdict == MB_POLICY_DENY) {
		*rule_ref = any->rule_ref;
		return MB_POLICY_DENY;
	}
	if (peer && peer->verdict == MB_POLICY_ALLOW) {
		*rule_ref = peer->rule_ref;
		return MB_POLICY_ALLOW;
	}
	if (cidr && cidr->verdict == MB_POLICY_ALLOW) {
		*rule_ref = cidr->rule_ref;
		return MB_POLICY_ALLOW;
	}
	if (any && any->verdict == MB_POLICY_ALLOW) {
		*rule_ref = any->rule_ref;
		return MB_POLICY_ALLOW;
	}
	*rule_ref = 0;
	return MB_POLICY_NONE;
}

#endif /* MB_LIB_POLICY_H */
