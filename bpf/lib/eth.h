/* SPDX-License-Identifier: Apache-2.0 */
/* eth.h: Ethernet and ARP parsing (bounds-checked accessors). */
#ifndef MB_LIB_ETH_H
#define MB_LIB_ETH_H

#include "common.h"

#define MB_ARPHRD_ETHER 1

/* ARP header (RFC 826); linux/if_arp.h is too costly to include. */
struct mb_arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	__u8 ar_hln;
	__u8 ar_pln;
	__be16 ar_op;
};

/* The payload of an Ethernet/IPv4 ARP packet (not in the UAPI headers). */
struct mb_arp_eth_ipv4 {
	__u8 sha[6];
	__u8 sip[4];
	__u8 tha[6];
	__u8 tip[4];
} __attribute__((packed));

static __always_inline struct ethhdr *mb_eth_header(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	return eth;
}

/*
 * Returns the Ethernet/IPv4 ARP payload, or 0 if the packet is truncated or
 * is not Ethernet/IPv4 ARP (the only kind a pod has a reason to send).
 */
static __always_inline struct mb_arp_eth_ipv4 *mb_arp_payload(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct mb_arphdr *arp = data + ETH_HLEN;
	struct mb_arp_eth_ipv4 *payload = (void *)(arp + 1);

	if ((void *)(payload + 1) > data_end)
		return 0;
	if (arp->ar_hrd != mb_htons(MB_ARPHRD_ETHER) || arp->ar_pro != mb_htons(ETH_P_IP) ||
	    arp->ar_hln != 6 || arp->ar_pln != 4)
		return 0;
	return payload;
}

#endif /* MB_LIB_ETH_H */
