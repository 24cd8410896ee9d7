/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bpf_lxc.c: programs for the host-side veth of every pod ("lxc" as in
 * Cilium). Compiled once per agent start; everything per endpoint lives in
 * maps, so the same two programs are attached to every pod's veth.
 */
#include "lib/common.h"
#include "types.h"
#include "maps.h"
#include "lib/metrics.h"
#include "lib/endpoints.h"
#include "lib/eth.h"
#include "lib/ipv4.h"
#include "lib/conntrack.h"

/* ARP from a pod: allowed only with the pod's own sender IP and MAC. */
static __always_inline int mb_from_container_arp(struct __sk_buff *skb, struct ethhdr *eth)
{
	struct mb_arp_eth_ipv4 *arp = mb_arp_payload(skb);
	struct mb_endpoint_info *src;
	__be32 sender_ip;

	if (!arp)
		return mb_drop(skb, MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);
	__builtin_memcpy(&sender_ip, arp->sip, sizeof(sender_ip));
	src = mb_lookup_endpoint(sender_ip);
	if (!src || src->ifindex != skb->ingress_ifindex)
		return mb_drop(skb, MB_DROP_SPOOFED_IP, MB_DIR_EGRESS);
	if (!mb_mac_equal(arp->sha, src->pod_mac) || !mb_mac_equal(eth->h_source, src->pod_mac))
		return mb_drop(skb, MB_DROP_SPOOFED_MAC, MB_DIR_EGRESS);
	mb_metrics_add(MB_FORWARDED, MB_DIR_EGRESS, skb->len);
	return TC_ACT_OK;
}

static __always_inline int mb_from_container_ipv4(struct __sk_buff *skb, struct ethhdr *eth)
{
	struct mb_ct_tuple4 tuple = {};
	struct mb_endpoint_info *src, *dst;
	struct iphdr *ip4 = mb_ipv4_header(skb);
	__u32 bytes = skb->len;
	__u8 tcp_flags;
	int l4;

	if (!ip4)
		return mb_drop(skb, MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);

	/* Anti-spoofing: the source must be the endpoint behind this very veth. */
	src = mb_lookup_endpoint(ip4->saddr);
	if (!src || src->ifindex != skb->ingress_ifindex)
		return mb_drop(skb, MB_DROP_SPOOFED_IP, MB_DIR_EGRESS);
	if (!mb_mac_equal(eth->h_source, src->pod_mac))
		return mb_drop(skb, MB_DROP_SPOOFED_MAC, MB_DIR_EGRESS);

	l4 = mb_ipv4_tuple(skb, ip4, &tuple, &tcp_flags);
	if (l4 == MB_L4_INVALID)
		return mb_drop(skb, MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);
	if (l4 == MB_L4_TRACKED &&
	    mb_ct_track(&tuple, tcp_flags, bytes, src->sec_identity) < 0)
		return mb_drop(skb, MB_DROP_CT_CREATE_FAILED, MB_DIR_EGRESS);

	/* (Issue 3: egress policy of src, then ingress policy of dst, go here.) */

	dst = mb_lookup_endpoint(ip4->daddr);
	/* TTL 1 goes to the stack, which answers with ICMP time exceeded. */
	if (dst && mb_endpoint_is_local_pod(dst) && ip4->ttl > 1) {
		__u32 dst_ifindex = dst->ifindex;

		mb_mac_copy(eth->h_dest, dst->pod_mac);
		mb_mac_copy(eth->h_source, dst->host_mac);
		if (mb_ipv4_dec_ttl(skb, ip4) < 0)
			return mb_drop(skb, MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);
		mb_metrics_add(MB_FORWARDED, MB_DIR_EGRESS, bytes);
		mb_metrics_add(MB_FORWARDED, MB_DIR_INGRESS, bytes);
		/* Straight into the destination pod's netns: no bridge, no
		 * second pass through the node's stack or qdiscs. */
		return bpf_redirect_peer(dst_ifindex, 0);
	}

	mb_metrics_add(MB_FORWARDED, MB_DIR_EGRESS, bytes);
	return TC_ACT_OK;
}

/*
 * Hook: tc ingress (clsact) on the pod's host-side veth.
 * Sees every packet the pod sends.
 */
int from_container(struct __sk_buff *skb)
{
	struct ethhdr *eth = mb_eth_header(skb);

	if (!eth)
		return mb_drop(skb, MB_DROP_INVALID_PACKET, MB_DIR_EGRESS);
	if (eth->h_proto == mb_htons(ETH_P_IP))
		return mb_from_container_ipv4(skb, eth);
	if (eth->h_proto == mb_htons(ETH_P_ARP))
		return mb_from_container_arp(skb, eth);
	return mb_drop(skb, MB_DROP_UNSUPPORTED_L3, MB_DIR_EGRESS);
}

/*
 * Hook: tc egress (clsact) on the pod's host-side veth.
 * Sees what the node's stack sends to the pod (pod-to-pod traffic of this
 * node bypasses it: bpf_redirect_peer enters the pod directly).
 */
int to_container(struct __sk_buff *skb)
{
	struct ethhdr *eth = mb_eth_header(skb);
	struct mb_ct_tuple4 tuple = {};
	struct mb_endpoint_info *dst;
	struct iphdr *ip4;
	__u32 bytes = skb->len;
	__u8 tcp_flags;
	int l4;

	if (!eth)
		return mb_drop(skb, MB_DROP_INVALID_PACKET, MB_DIR_INGRESS);
	if (eth->h_proto == mb_htons(ETH_P_ARP)) {
		mb_metrics_add(MB_FORWARDED, MB_DIR_INGRESS, bytes);
		return TC_ACT_OK;
	}
	if (eth->h_proto != mb_htons(ETH_P_IP))
		return mb_drop(skb, MB_DROP_UNSUPPORTED_L3, MB_DIR_INGRESS);

	ip4 = mb_ipv4_header(skb);
	if (!ip4)
		return mb_drop(skb, MB_DROP_INVALID_PACKET, MB_DIR_INGRESS);
	/* The node routes only podIP/32 here; anything else is not for this pod. */
	dst = mb_lookup_endpoint(ip4->daddr);
	if (!dst || dst->ifindex != skb->ifindex)
		return mb_drop(skb, MB_DROP_NO_ENDPOINT, MB_DIR_INGRESS);

	l4 = mb_ipv4_tuple(skb, ip4, &tuple, &tcp_flags);
	if (l4 == MB_L4_INVALID)
		return mb_drop(skb, MB_DROP_INVALID_PACKET, MB_DIR_INGRESS);
	/* (Issue 3: the initiator's identity comes from the ipcache.) */
	if (l4 == MB_L4_TRACKED && mb_ct_track(&tuple, tcp_flags, bytes, 0) < 0)
		return mb_drop(skb, MB_DROP_CT_CREATE_FAILED, MB_DIR_INGRESS);

	mb_metrics_add(MB_FORWARDED, MB_DIR_INGRESS, bytes);
	return TC_ACT_OK;
}
