/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bpf_overlay.c: the program for the node's VXLAN device (external,
 * collect-metadata mode), receiving pod traffic from other nodes.
 *
 * The sending node already judged the source's egress policy; this node
 * judges the destination's ingress policy with the identity carried in the
 * VNI, and the CIDR identity of the inner source address (for ipBlocks, from
 * this node's CIDR map). The VNI is trusted, not this node's ipcache: the
 * sender knows its own pod's identity first-hand, while our ipcache may lag
 * behind a pod that just started over there. It is trusted only from a
 * node (the outer source is an ipcache entry flagged NODE) and only for an
 * inner source that node owns: itself, or an address whose ipcache entry
 * names it as tunnel endpoint (its pods; its pod CIDR covers pods our
 * ipcache has not heard of yet). See docs/trust-model.md. Each node keeps its own conntrack entry of the
 * flow (replies leave through bpf_lxc.c's from_container, which finds it).
 */
#include "lib/common.h"
#include "types.h"
#include "maps.h"
#include "lib/metrics.h"
#include "lib/endpoints.h"
#include "lib/eth.h"
#include "lib/ipv4.h"
#include "lib/conntrack.h"
#include "lib/ipcache.h"
#include "lib/policy.h"
#include "lib/events.h"
#include "lib/drop.h"
#include "lib/flow.h"
#include "lib/overlay.h"
#include "lib/nodeport.h"

/*
 * A packet the overlay's trust rules refuse: counted and reported with the
 * inner flow and the identity its VNI claimed (what an operator looks for).
 */
static __always_inline int mb_overlay_refuse(struct __sk_buff *skb, const struct mb_ct_tuple4 *tuple,
					     __u8 tcp_flags, __u32 claimed, __u8 reason)
{
	struct mb_flow_event *ev = mb_event_start(MB_EVENT_DROP, tuple, tcp_flags, skb->len,
						  skb->ingress_ifindex, MB_DIR_INGRESS);

	if (ev)
		ev->src_identity = claimed;
	return mb_drop_flow(ev, reason, MB_DIR_INGRESS);
}

/*
 * Into the node's stack rather than straight into a pod: the inner frame
 * is addressed to the sending node's device, so it is re-typed as for
 * this host (the stack drops PACKET_OTHERHOST).
 */
static __always_inline int mb_overlay_to_stack(struct __sk_buff *skb, __u32 bytes)
{
	bpf_skb_change_type(skb, MB_PACKET_HOST);
	mb_metrics_add(MB_FORWARDED, MB_DIR_INGRESS, bytes);
	return TC_ACT_OK;
}

static __always_inline int mb_from_overlay_ipv4(struct __sk_buff *skb, struct ethhdr *eth,
						__u32 src_identity, __be32 remote)
{
	struct mb_ct_tuple4 tuple = {};
	struct mb_endpoint_info *dst;
	struct mb_ct_entry *entry = 0;
	struct iphdr *ip4 = mb_ipv4_header(skb);
	__u32 bytes = skb->len, dst_ifindex;
	__u8 tcp_flags, trust, closed = 0;
	int l4, drop, rev, ct = MB_CT_NEW;

	if (!ip4)
		return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_INGRESS);
	l4 = mb_ipv4_tuple(skb, ip4, &tuple, &tcp_flags);
	/* Trust first, before conntrack (a forged reply of an open connection
	 * is refused too): VXLAN only from nodes, and the VNI's identity only
	 * for what the sending node owns (docs/trust-model.md). */
	trust = mb_overlay_trust(remote, tuple.saddr);
	if (trust != MB_FORWARDED)
		return mb_overlay_refuse(skb, &tuple, tcp_flags, src_identity, trust);

	/* Only pods of this node are reachable through the tunnel, and the
	 * node itself for replies of what its stack sent (to_overlay). */
	dst = mb_lookup_endpoint(tuple.daddr);
	if (dst && !mb_endpoint_is_local_pod(dst))
		dst = 0;
	if (!dst) {
		/* A backend's reply to a flow this node SNATed (bpf_host.c): shown as the
		 * frontend's and sent out to the client. */
		rev = mb_np_reverse(skb);
		if (rev < 0)
			return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_INGRESS);
		if (rev > 0) {
			mb_metrics_add(MB_FORWARDED, MB_DIR_INGRESS, bytes);
			return mb_np_send_out(skb);
		}
	}
	/* One classification for both cases (compile time: it is large). The
	 * empty asm keeps the compiler from merging the two loads into one
	 * through a chosen pointer, which the verifier refuses for the context. */
	dst_ifindex = skb->ingress_ifindex;
	asm volatile("" : "+r"(dst_ifindex));
	if (dst)
		dst_ifindex = dst->ifindex;
	drop = mb_flow_classify(skb, ip4, &tuple, l4, tcp_flags, bytes, MB_DIR_INGRESS, dst_ifindex, &ct, &closed,
				&entry);
	if (drop)
		return drop;
	if (!dst) {
		if (ct == MB_CT_RELATED || (entry && (entry->flags & MB_CT_F_VIA_STACK)))
			return mb_overlay_to_stack(skb, bytes);
		return mb_drop(MB_DROP_NO_ENDPOINT, MB_DIR_INGRESS);
	}
	/* A flow this node's stack sent into the tunnel (to_overlay): netfilter
	 * translated it on the way out (a ClusterIP connection to a backend over
	 * there), so its packets come back through the stack, which reverses it. */
	if (entry && (entry->flags & MB_CT_F_VIA_STACK))
		return mb_overlay_to_stack(skb, bytes);

	if (ct == MB_CT_NEW) {
		/* Ingress of the destination from the VNI's identity, and the
		 * CIDR identity of the inner source address (this node's own
		 * ipBlock prefixes); the sender's egress was judged on its node. */
		struct mb_flow_facts flow = {
			.tuple = &tuple, .l4 = l4, .tcp_flags = tcp_flags, .hook_dir = MB_DIR_INGRESS,
			.egress_ep = 0, .ingress_ep = dst, .hook_ep = dst,
			.src_identity = src_identity, .dst_identity = dst->sec_identity,
			.src_cidr = mb_cidr_identity(tuple.saddr), .dst_cidr = 0,
			.ifindex = dst_ifindex, .path = MB_PATH_REDIRECT,
		};

		drop = mb_flow_new(skb, &flow);
		if (drop)
			return drop;
	} else if (closed) {
		mb_flow_trace_end(skb, &tuple, tcp_flags, ct, entry, dst, MB_DIR_INGRESS, dst_ifindex);
	}

	/* The sending node decremented the TTL already (one routing hop). */
	mb_mac_copy(eth->h_dest, dst->pod_mac);
	mb_mac_copy(eth->h_source, dst->host_mac);
	mb_metrics_add(MB_FORWARDED, MB_DIR_INGRESS, bytes);
	return bpf_redirect_peer(dst_ifindex, 0);
}

static __always_inline int mb_from_overlay(struct __sk_buff *skb)
{
	struct ethhdr *eth = mb_eth_header(skb);
	__u32 src_identity;
	__be32 remote = 0;

	if (!eth)
		return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_INGRESS);
	/* Nothing but pod IPv4 is ever sent into the tunnel (no ARP: the
	 * sender's program addresses the remote node itself). */
	if (eth->h_proto != mb_htons(ETH_P_IP))
		return mb_drop(MB_DROP_UNSUPPORTED_L3, MB_DIR_INGRESS);
	src_identity = mb_overlay_identity(skb, &remote);
	if (!src_identity)
		return mb_drop(MB_DROP_TUNNEL_KEY, MB_DIR_INGRESS);
	return mb_from_overlay_ipv4(skb, eth, src_identity, remote);
}

/*
 * Hook: tc ingress (clsact) on the node's VXLAN device.
 * Sees every decapsulated packet other nodes send to this node's pods.
 */
int from_overlay(struct __sk_buff *skb)
{
	return mb_finish(skb, mb_from_overlay(skb), skb->ingress_ifindex);
}

/*
 * What the node's stack routes into the tunnel (the cluster CIDR's route
 * points at the VXLAN device): a pod's packet netfilter translated (a
 * ClusterIP connection kube-proxy DNATed to a backend on another node), or
 * the node's own. from_container's packets carry their tunnel key already
 * and pass untouched. Others get the key here: remote node from the
 * ipcache, VNI = the source's identity (a local pod's, or REMOTE_NODE for
 * the node's own address, which is how the receiver's ipcache knows it);
 * any other source is one the receiver would refuse, so it is dropped
 * here. The flow's entry is marked VIA_STACK: its replies, arriving at
 * from_overlay, go through the stack, which reverses the translation. A
 * local pod's egress is judged against the backend (as to_container does).
 */
static __always_inline int mb_to_overlay(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key = {};
	struct mb_ct_tuple4 tuple = {};
	struct mb_ipcache_value *remote;
	struct mb_endpoint_info *src;
	struct mb_node_config *cfg;
	struct mb_ct_entry *entry = 0;
	struct ethhdr *eth;
	struct iphdr *ip4;
	__u32 bytes = skb->len, ifindex = skb->ifindex, identity;
	__u8 tcp_flags, closed = 0;
	int l4, drop, ct = MB_CT_NEW;

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) == 0)
		return TC_ACT_OK;
	eth = mb_eth_header(skb);
	if (!eth)
		return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);
	if (eth->h_proto != mb_htons(ETH_P_IP))
		return mb_drop(MB_DROP_UNSUPPORTED_L3, MB_DIR_EGRESS);
	ip4 = mb_ipv4_header(skb);
	if (!ip4)
		return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);
	remote = mb_ipcache_lookup(ip4->daddr);
	if (!remote || !remote->tunnel_endpoint)
		return mb_drop(MB_DROP_NO_ROUTE, MB_DIR_EGRESS);
	src = mb_local_pod(ip4->saddr);
	cfg = mb_node_config();
	if (src)
		identity = src->sec_identity;
	else if (cfg && cfg->node_ip && cfg->node_ip == ip4->saddr)
		identity = MB_IDENTITY_REMOTE_NODE;
	else
		return mb_drop(MB_DROP_TUNNEL_SOURCE_NOT_OWNED, MB_DIR_EGRESS);

	l4 = mb_ipv4_tuple(skb, ip4, &tuple, &tcp_flags);
	drop = mb_flow_classify(skb, ip4, &tuple, l4, tcp_flags, bytes, MB_DIR_EGRESS, ifindex, &ct, &closed, &entry);
	if (drop)
		return drop;
	if (ct == MB_CT_NEW) {
		struct mb_flow_facts flow = {
			.tuple = &tuple, .l4 = l4, .tcp_flags = tcp_flags, .hook_dir = MB_DIR_EGRESS,
			.egress_ep = src, .ingress_ep = 0, .hook_ep = src,
			.src_identity = identity, .dst_identity = remote->sec_identity,
			.src_cidr = 0, .dst_cidr = src ? mb_cidr_identity_of(tuple.daddr, remote) : 0,
			.ifindex = ifindex, .ct_flags = MB_CT_F_VIA_STACK, .path = MB_PATH_STACK,
		};

		drop = mb_flow_new(skb, &flow);
		if (drop)
			return drop;
	} else if (closed && src) {
		mb_flow_trace_end(skb, &tuple, tcp_flags, ct, entry, src, MB_DIR_EGRESS, ifindex);
	}

	__builtin_memset(&key, 0, sizeof(key));
	key.tunnel_id = identity & MB_VNI_MASK;
	/* The helper takes the address in host byte order. */
	key.remote_ipv4 = __builtin_bswap32(remote->tunnel_endpoint);
	key.tunnel_ttl = MB_TUNNEL_TTL;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0)
		return mb_drop(MB_DROP_TUNNEL_KEY, MB_DIR_EGRESS);
	mb_metrics_add(MB_FORWARDED, MB_DIR_EGRESS, bytes);
	return TC_ACT_OK;
}

/*
 * Hook: tc egress (clsact) on the node's VXLAN device.
 * Sees what leaves through the tunnel: from_container's redirects and what
 * the node's stack routes there.
 */
int to_overlay(struct __sk_buff *skb)
{
	return mb_finish(skb, mb_to_overlay(skb), skb->ifindex);
}
