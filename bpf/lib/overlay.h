/* SPDX-License-Identifier: Apache-2.0 */
/*
 * overlay.h: pod traffic between nodes over the VXLAN device.
 *
 * The node's VXLAN device runs in external (collect-metadata) mode: it has
 * no fixed remote or VNI, each packet carries its own in the skb's tunnel
 * metadata. The sender sets it (remote node from the ipcache, VNI = the
 * source pod's security identity); the receiver reads the VNI back and
 * judges ingress policy with it, so identities never need resolving from
 * addresses on the receiving side (Cilium's design). Identities therefore
 * fit in 24 bits (membrane/identities.py keeps cluster identities there).
 */
#ifndef MB_LIB_OVERLAY_H
#define MB_LIB_OVERLAY_H

#include "common.h"
#include "../types.h"
#include "../maps.h"
#include "metrics.h"
#include "drop.h"
#include "ipcache.h"

#define MB_TUNNEL_TTL 64
#define MB_PACKET_HOST 0 /* skb->pkt_type for this host (linux/if_packet.h PACKET_HOST) */

static __always_inline struct mb_node_config *mb_node_config(void)
{
	__u32 zero = 0;

	return mb_node_config_v1.lookup(&zero);
}

/*
 * Hand the packet to the tunnel device for the node at `remote` (network
 * order, from the ipcache), stamping `identity` as its VNI. bpf_redirect
 * to the device's egress: its xmit encapsulates with our metadata, the
 * node's routing then carries the UDP packet over the underlay.
 * `bytes`: the inner packet length, for the counters.
 */
static __always_inline int mb_overlay_send(struct __sk_buff *skb, __be32 remote, __u32 identity,
					   __u32 bytes)
{
	struct mb_node_config *cfg = mb_node_config();
	struct bpf_tunnel_key key = {};
	__u32 tunnel_ifindex;

	/* No tunnel configured: drop rather than leak pod traffic unencapsulated. */
	if (!cfg || !cfg->tunnel_ifindex)
		return mb_drop(MB_DROP_NO_ROUTE, MB_DIR_EGRESS);
	tunnel_ifindex = cfg->tunnel_ifindex;
	key.tunnel_id = identity & MB_VNI_MASK;
	/* The helper takes the address in host byte order. */
	key.remote_ipv4 = __builtin_bswap32(remote);
	key.tunnel_ttl = MB_TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return mb_drop(MB_DROP_TUNNEL_KEY, MB_DIR_EGRESS);
	mb_metrics_add(MB_FORWARDED, MB_DIR_EGRESS, bytes);
	return bpf_redirect(tunnel_ifindex, 0);
}

/* Whether dport (network order) is this cluster's tunnel port (none configured: never). */
static __always_inline int mb_is_tunnel_port(__be16 dport)
{
	struct mb_node_config *cfg = mb_node_config();

	return cfg && cfg->tunnel_port && cfg->tunnel_port == dport;
}

/*
 * What the tunnel metadata of a received packet says: the VNI (the source
 * identity the sender claims) and the outer source address (the sender).
 * Returns 0 when there is none (no metadata, or VNI 0, which no sender of
 * ours uses): the caller drops.
 */
static __always_inline __u32 mb_overlay_identity(struct __sk_buff *skb, __be32 *remote)
{
	struct bpf_tunnel_key key = {};

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0) {
		/* The helper gives the address in host byte order. */
		*remote = __builtin_bswap32(key.remote_ipv4);
		return key.tunnel_id & MB_VNI_MASK;
	}
#ifdef MB_TEST_TUNNEL_FROM_MARK
	/* Test builds only: BPF_PROG_TEST_RUN cannot attach tunnel metadata
	 * to its skb, so tests pass the VNI in skb->mark and the outer source
	 * (network order) in skb->cb[0] instead. */
	*remote = skb->cb[0];
	return skb->mark & MB_VNI_MASK;
#else
	return 0;
#endif
}

/* Whether the ipcache knows `remote` (network order) as a node's underlay address. */
static __always_inline int mb_overlay_peer_is_node(__be32 remote)
{
	struct mb_ipcache_value *peer;

	if (!remote)
		return 0;
	peer = mb_ipcache_lookup(remote);
	return peer && (peer->flags & MB_IPCACHE_F_NODE);
}

/*
 * The trust rules for a packet the node at `remote` (outer source, network
 * order) tunnelled with inner source `saddr`: MB_FORWARDED when that node
 * may speak for saddr (the VNI is then its word for one of its own
 * endpoints), else the drop reason.
 *
 * It may when saddr's ipcache entry names it as tunnel endpoint (its pods,
 * its pod CIDR), or when saddr is the node itself. The agent flags every
 * tunnel endpoint it writes as a NODE entry (policy_syncing.py, checked by
 * its tests), so the first case needs no lookup of the peer: the common
 * packet costs one LPM lookup, and the peer's own entry is read only for
 * the node's own traffic and to name the reason of a drop.
 */
static __always_inline __u8 mb_overlay_trust(__be32 remote, __be32 saddr)
{
	struct mb_ipcache_value *src = mb_ipcache_lookup(saddr);

	if (likely(src && remote && src->tunnel_endpoint == remote))
		return MB_FORWARDED;
	if (!mb_overlay_peer_is_node(remote))
		return MB_DROP_UNKNOWN_TUNNEL_PEER;
	return saddr == remote ? MB_FORWARDED : MB_DROP_TUNNEL_SOURCE_NOT_OWNED;
}

#endif /* MB_LIB_OVERLAY_H */
