/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bpf_host.c: the programs on the node's own devices (--devices: the
 * uplinks traffic from outside the cluster arrives on).
 *
 * Per-packet Service load balancing where no socket hook sees the
 * traffic: a packet from outside for a NodePort (a node address), an
 * externalIP or a LoadBalancer IP is translated to a backend at tc ingress
 * and handed to the stack, which routes it to the pod (or, SNATed to the
 * node's address, into the overlay for another node's pod); the backend's
 * reply is translated back at tc egress (a local backend's) or in
 * from_overlay (another node's). Logic in lib/nodeport.h.
 */
#include "lib/common.h"
#include "types.h"
#include "maps.h"
#include "lib/eth.h"
#include "lib/ipv4.h"
#include "lib/nodeport.h"

/*
 * Hook: tc ingress (clsact) on each of the node's devices.
 * Packets from outside to a per-packet frontend go to their backend.
 */
int from_netdev(struct __sk_buff *skb)
{
	struct ethhdr *eth = mb_eth_header(skb);

	if (!eth || eth->h_proto != mb_htons(ETH_P_IP))
		return TC_ACT_OK;
	return mb_finish(skb, mb_np_forward(skb), skb->ifindex);
}

/*
 * Hook: tc egress (clsact) on each of the node's devices.
 * A local backend's reply leaves as the frontend's.
 */
int to_netdev(struct __sk_buff *skb)
{
	struct ethhdr *eth = mb_eth_header(skb);

	if (!eth || eth->h_proto != mb_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (mb_np_reverse(skb) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}
