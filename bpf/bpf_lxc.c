/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bpf_lxc.c: programs for the host-side veth of every pod ("lxc" as in
 * Cilium). Compiled once per agent start; everything per endpoint lives in
 * maps, so the same two programs are attached to every pod's veth.
 *
 * Policy is judged on the first packet of a connection (conntrack miss);
 * conntrack carries the rest, replies included, and a flow is judged again
 * when the policy revision changed since (lib/flow.h). Every local pod is
 * judged: no policy entry means drop, so the agent writes an allow-all
 * entry for each direction in which no policy isolates the pod.
 *
 * A destination on another node (its ipcache entry names a tunnel
 * endpoint) leaves through the VXLAN device with the source's identity as
 * VNI (lib/overlay.h); bpf_overlay.c receives it there. Pods never reach
 * a node's tunnel port themselves (docs/trust-model.md).
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

/* ARP from a pod: allowed only with the pod's own sender IP and MAC. */
static __always_inline int mb_from_container_arp(struct __sk_buff *skb, struct ethhdr *eth)
{
	struct mb_arp_eth_ipv4 *arp = mb_arp_payload(skb);
	__u32 ifindex = skb->ingress_ifindex;
	struct mb_endpoint_info *src;
	__be32 sender_ip;

	if (!arp)
		return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);
	__builtin_memcpy(&sender_ip, arp->sip, sizeof(sender_ip));
	src = mb_lookup_endpoint(sender_ip);
	if (!src || src->ifindex != ifindex)
		return mb_drop(MB_DROP_SPOOFED_IP, MB_DIR_EGRESS);
	if (!mb_mac_equal(arp->sha, src->pod_mac) || !mb_mac_equal(eth->h_source, src->pod_mac))
		return mb_drop(MB_DROP_SPOOFED_MAC, MB_DIR_EGRESS);
	mb_metrics_add(MB_FORWARDED, MB_DIR_EGRESS, skb->len);
	return TC_ACT_OK;
}

static __always_inline int mb_from_container_ipv4(struct __sk_buff *skb, struct ethhdr *eth)
{
	struct mb_ct_tuple4 tuple = {};
	struct mb_endpoint_info *src, *dst, *local_dst;
	struct mb_ct_entry *entry = 0;
	struct iphdr *ip4 = mb_ipv4_header(skb);
	__u32 bytes = skb->len, ifindex = skb->ingress_ifindex, dst_identity = MB_IDENTITY_WORLD;
	__u32 dst_cidr = MB_IDENTITY_WORLD;
	__be32 tunnel = 0;
	__u8 tcp_flags, closed = 0;
	int l4, drop, ct = MB_CT_NEW;

	if (!ip4)
		return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);

	/* Anti-spoofing: the source must be the endpoint behind this very veth. */
	src = mb_lookup_endpoint(ip4->saddr);
	if (!src || src->ifindex != ifindex)
		return mb_drop(MB_DROP_SPOOFED_IP, MB_DIR_EGRESS);
	if (!mb_mac_equal(eth->h_source, src->pod_mac))
		return mb_drop(MB_DROP_SPOOFED_MAC, MB_DIR_EGRESS);

	l4 = mb_ipv4_tuple(skb, ip4, &tuple, &tcp_flags);
	drop = mb_flow_classify(skb, ip4, &tuple, l4, tcp_flags, bytes, MB_DIR_EGRESS, ifindex, &ct, &closed, &entry);
	if (drop)
		return drop;

	dst = mb_lookup_endpoint(ip4->daddr);
	local_dst = dst && mb_endpoint_is_local_pod(dst) ? dst : 0;
	if (!local_dst) {
		/* A pod of another node: the ipcache says which node (tunnel endpoint). */
		struct mb_ipcache_value *remote = mb_ipcache_lookup(ip4->daddr);

		if (remote) {
			dst_identity = remote->sec_identity;
			tunnel = remote->tunnel_endpoint;
			/* A reply to another node's own connection (it came
			 * through the tunnel: that node's to_overlay) goes back
			 * the same way; over the underlay it would reach that
			 * node's stack as a stranger (and be masqueraded here). */
			if (!tunnel && ct == MB_CT_REPLY && (remote->flags & MB_IPCACHE_F_NODE))
				tunnel = ip4->daddr;
		}
		if (ct == MB_CT_NEW)
			dst_cidr = mb_cidr_identity_of(ip4->daddr, remote);
	} else if (ct == MB_CT_NEW) {
		struct mb_ipcache_value *cached = mb_ipcache_lookup(ip4->daddr);

		if (cached)
			dst_identity = cached->sec_identity;
		dst_cidr = mb_cidr_identity_of(ip4->daddr, cached);
	}
	/* Only nodes speak VXLAN: a pod's datagram to the tunnel port of anything
	 * but a pod (a node's address, or one NATed to it) could carry a forged
	 * VNI into a node's overlay. Pod to pod on that port stays allowed: it is
	 * delivered into the pod, never to a node's tunnel socket. */
	if (tuple.nexthdr == MB_IPPROTO_UDP && !local_dst && !tunnel && mb_is_tunnel_port(tuple.dport))
		return mb_drop(MB_DROP_POD_TO_TUNNEL_PORT, MB_DIR_EGRESS);

	if (ct == MB_CT_NEW) {
		/* Egress of src towards the destination's identity, then ingress
		 * of a local destination from src's identity (a remote
		 * destination's node judges its ingress on arrival), each with
		 * the peer address's CIDR identity too (ipBlocks select pods). */
		struct mb_flow_facts flow = {
			.tuple = &tuple, .l4 = l4, .tcp_flags = tcp_flags, .hook_dir = MB_DIR_EGRESS,
			.egress_ep = src, .ingress_ep = local_dst, .hook_ep = src,
			.src_identity = src->sec_identity, .dst_identity = dst_identity,
			.src_cidr = local_dst ? mb_cidr_identity(ip4->saddr) : 0, .dst_cidr = dst_cidr,
			.ifindex = ifindex,
			.path = ip4->ttl <= 1 ? MB_PATH_STACK :
				local_dst ? MB_PATH_REDIRECT : tunnel ? MB_PATH_TUNNEL : MB_PATH_STACK,
		};

		drop = mb_flow_new(skb, &flow);
		if (drop)
			return drop;
	} else if (closed) {
		mb_flow_trace_end(skb, &tuple, tcp_flags, ct, entry, src, MB_DIR_EGRESS, ifindex);
	}

	/* A flow that came out of the node's stack (MB_CT_F_VIA_STACK, set by
	 * to_container) goes back through it, either way: netfilter may have
	 * translated it (kube-proxy's ClusterIP DNAT, a portmap hostPort) and
	 * only the stack can reverse that. Redirected around it, the reply of
	 * a ClusterIP connection would reach the client from the backend's own
	 * address. Pod-to-pod flows set up here keep the shortcut. */
	if (entry && (entry->flags & MB_CT_F_VIA_STACK))
		goto to_stack;

	/* TTL 1 goes to the stack, which answers with ICMP time exceeded. */
	if (local_dst && ip4->ttl > 1) {
		__u32 dst_ifindex = local_dst->ifindex;

		mb_mac_copy(eth->h_dest, local_dst->pod_mac);
		mb_mac_copy(eth->h_source, local_dst->host_mac);
		if (mb_ipv4_dec_ttl(skb, ip4) < 0)
			return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);
		mb_metrics_add(MB_FORWARDED, MB_DIR_EGRESS, bytes);
		mb_metrics_add(MB_FORWARDED, MB_DIR_INGRESS, bytes);
		/* Straight into the destination pod's netns: no bridge, no
		 * second pass through the node's stack or qdiscs. */
		return bpf_redirect_peer(dst_ifindex, 0);
	}

	/* Across the overlay: this node routes, so the TTL drops here once. */
	if (tunnel && ip4->ttl > 1) {
		__u32 identity = src->sec_identity;

		if (mb_ipv4_dec_ttl(skb, ip4) < 0)
			return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);
		return mb_overlay_send(skb, tunnel, identity, bytes);
	}

to_stack:
	mb_metrics_add(MB_FORWARDED, MB_DIR_EGRESS, bytes);
	return TC_ACT_OK;
}

static __always_inline int mb_from_container(struct __sk_buff *skb)
{
	struct ethhdr *eth = mb_eth_header(skb);

	if (!eth)
		return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);
	if (eth->h_proto == mb_htons(ETH_P_IP))
		return mb_from_container_ipv4(skb, eth);
	if (eth->h_proto == mb_htons(ETH_P_ARP))
		return mb_from_container_arp(skb, eth);
	return mb_drop(MB_DROP_UNSUPPORTED_L3, MB_DIR_EGRESS);
}

/*
 * Hook: tc ingress (clsact) on the pod's host-side veth.
 * Sees every packet the pod sends.
 */
int from_container(struct __sk_buff *skb)
{
	return mb_finish(skb, mb_from_container(skb), skb->ingress_ifindex);
}

static __always_inline int mb_to_container(struct __sk_buff *skb)
{
	struct ethhdr *eth = mb_eth_header(skb);
	struct mb_ct_tuple4 tuple = {};
	struct mb_endpoint_info *dst;
	struct mb_ct_entry *entry = 0;
	struct iphdr *ip4;
	__u32 bytes = skb->len, ifindex = skb->ifindex;
	__u8 tcp_flags, closed = 0;
	int l4, drop, ct = MB_CT_NEW;

	if (!eth)
		return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_INGRESS);
	if (eth->h_proto == mb_htons(ETH_P_ARP)) {
		mb_metrics_add(MB_FORWARDED, MB_DIR_INGRESS, bytes);
		return TC_ACT_OK;
	}
	if (eth->h_proto != mb_htons(ETH_P_IP))
		return mb_drop(MB_DROP_UNSUPPORTED_L3, MB_DIR_INGRESS);

	ip4 = mb_ipv4_header(skb);
	if (!ip4)
		return mb_drop(MB_DROP_INVALID_PACKET, MB_DIR_INGRESS);
	/* The node routes only podIP/32 here; anything else is not for this pod. */
	dst = mb_lookup_endpoint(ip4->daddr);
	if (!dst || dst->ifindex != ifindex)
		return mb_drop(MB_DROP_NO_ENDPOINT, MB_DIR_INGRESS);

	l4 = mb_ipv4_tuple(skb, ip4, &tuple, &tcp_flags);
	drop = mb_flow_classify(skb, ip4, &tuple, l4, tcp_flags, bytes, MB_DIR_INGRESS, ifindex, &ct, &closed, &entry);
	if (drop)
		return drop;

	if (ct == MB_CT_NEW) {
		/* Out of the node's stack towards the pod: the host, the
		 * outside, or a pod whose packet netfilter translated on the
		 * way (a ClusterIP or hostPort connection, now addressed to its
		 * backend). The sender's identity comes from the ipcache (the
		 * node's own addresses are HOST there), its CIDR identity from
		 * its address; a local pod sender's egress is judged too,
		 * against the backend it reaches (as mb_flow_recheck will). The
		 * entry is marked VIA_STACK: the flow's packets from the pod go
		 * back through the stack, which reverses the translation. */
		struct mb_ipcache_value *cached = mb_ipcache_lookup(tuple.saddr);
		struct mb_endpoint_info *src_pod = mb_local_pod(tuple.saddr);
		struct mb_flow_facts flow = {
			.tuple = &tuple, .l4 = l4, .tcp_flags = tcp_flags, .hook_dir = MB_DIR_INGRESS,
			.egress_ep = src_pod, .ingress_ep = dst, .hook_ep = dst,
			.src_identity = cached ? cached->sec_identity : MB_IDENTITY_WORLD,
			.dst_identity = dst->sec_identity,
			.src_cidr = mb_cidr_identity_of(tuple.saddr, cached),
			.dst_cidr = src_pod ? mb_cidr_identity(tuple.daddr) : 0,
			.ifindex = ifindex, .ct_flags = MB_CT_F_VIA_STACK, .path = MB_PATH_STACK,
		};

		drop = mb_flow_new(skb, &flow);
		if (drop)
			return drop;
	} else if (closed) {
		mb_flow_trace_end(skb, &tuple, tcp_flags, ct, entry, dst, MB_DIR_INGRESS, ifindex);
	}

	mb_metrics_add(MB_FORWARDED, MB_DIR_INGRESS, bytes);
	return TC_ACT_OK;
}

/*
 * Hook: tc egress (clsact) on the pod's host-side veth.
 * Sees what the node's stack sends to the pod (pod-to-pod traffic of this
 * node bypasses it: bpf_redirect_peer enters the pod directly).
 */
int to_container(struct __sk_buff *skb)
{
	return mb_finish(skb, mb_to_container(skb), skb->ifindex);
}
