/* SPDX-License-Identifier: Apache-2.0 */
/*
 * nodeport.h: per-packet load balancing of traffic that no socket hook
 * sees: packets arriving on the node's devices for a NodePort, an
 * externalIP or a LoadBalancer IP (bpf_host.c), and their replies.
 *
 * A new flow gets its backend from the frontend's Maglev table (hash of the
 * 5-tuple; ClientIP affinity first when the service asks for it) and two
 * NAT entries (mb_lb4_nat_v1): forward (client -> frontend becomes client
 * -> backend; for a backend on another node node -> backend, SNAT, so the
 * reply comes back here through the overlay) and reply (the backend's
 * answer becomes the frontend's). Established flows keep their backend
 * while it serves the frontend. A frontend with no usable backend is
 * refused on the spot: a TCP RST, or ICMP port unreachable for UDP, sent
 * back out of the device the packet came in on, never a silent drop.
 */
#ifndef MB_LIB_NODEPORT_H
#define MB_LIB_NODEPORT_H

#include "common.h"
#include "l4.h"
#include "ipv4.h"
#include "lb.h"
#include "overlay.h"
#include "events.h"
#include "../maps.h"

#define MB_NP_PER_PACKET (MB_LB_F_NODE_PORT | MB_LB_F_EXTERNAL_IP | MB_LB_F_LOAD_BALANCER)
#define MB_NP_IP_CSUM (ETH_HLEN + offsetof(struct iphdr, check))
#define MB_NP_SNAT_TRIES 4

/* bcc declares the helper without its plen argument; the kernel's has four. */
static long (*mb_redirect_neigh)(__u32 ifindex, void *params, int plen, __u64 flags) =
	(void *)BPF_FUNC_redirect_neigh;

/* The flow's hash: the same on every node and across restarts (no random seed). */
static __always_inline __u32 mb_np_hash(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport, __u8 proto)
{
	__u32 h = 0x9e3779b9u ^ proto;

	h ^= saddr;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h ^= daddr;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	h ^= ((__u32)sport << 16) | dport;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	return h;
}

/* The backend of the frontend's Maglev entry for `hash`, or 0. */
static __always_inline struct mb_lb4_backend *mb_np_maglev(__u16 rev_nat_index, __u32 hash, __u32 *backend_id)
{
	struct mb_lb4_maglev_key mkey = { .rev_nat_index = rev_nat_index, .index = hash % MB_LB_MAGLEV_SIZE };
	struct mb_lb4_backend_key bkey = {};
	struct mb_lb4_maglev *entry = mb_lb4_maglev_v1.lookup(&mkey);
	struct mb_lb4_backend *backend;

	if (!entry)
		return 0;
	bkey.backend_id = entry->backend_id;
	backend = mb_lb4_backends_v1.lookup(&bkey);
	if (backend)
		*backend_id = entry->backend_id;
	return backend;
}

/* Rewrite (address, port) at the source (src=1) or destination of an IPv4 TCP/UDP packet. */
static __always_inline int mb_np_rewrite(struct __sk_buff *skb, __u32 l4_off, __u8 proto, int src,
					 __be32 old_addr, __be32 new_addr, __be16 old_port, __be16 new_port)
{
	__u32 addr_off = ETH_HLEN + (src ? offsetof(struct iphdr, saddr) : offsetof(struct iphdr, daddr));
	__u32 port_off = l4_off + (src ? 0 : 2);
	__u32 csum_off = l4_off + (proto == MB_IPPROTO_TCP ? offsetof(struct mb_tcphdr, check)
							  : offsetof(struct mb_udphdr, check));
	__u64 mangled = proto == MB_IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (old_addr != new_addr) {
		if (bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr, BPF_F_PSEUDO_HDR | mangled | 4) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, MB_NP_IP_CSUM, old_addr, new_addr, 4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, addr_off, &new_addr, 4, 0) < 0)
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | 2) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, 2, 0) < 0)
			return -1;
	}
	return 0;
}

/* Apply a NAT entry to the packet whose tuple is `key` (both addresses and ports). */
static __always_inline int mb_np_apply(struct __sk_buff *skb, __u32 l4_off, const struct mb_lb4_nat_key *key,
				       const struct mb_lb4_nat *nat)
{
	if (mb_np_rewrite(skb, l4_off, key->proto, 1, key->saddr, nat->saddr, key->sport, nat->sport) < 0)
		return -1;
	return mb_np_rewrite(skb, l4_off, key->proto, 0, key->daddr, nat->daddr, key->dport, nat->dport);
}

/* The tuple of an IPv4 TCP/UDP packet that is no fragment; l4_off set. 0: not one. */
static __always_inline int mb_np_tuple(struct __sk_buff *skb, struct mb_lb4_nat_key *key, __u32 *l4_off,
				       __u8 *tcp_flags, __u8 dir)
{
	struct mb_ct_tuple4 tuple = {};
	struct iphdr *ip4 = mb_ipv4_header(skb);

	if (!ip4)
		return 0;
	if (ip4->protocol != MB_IPPROTO_TCP && ip4->protocol != MB_IPPROTO_UDP)
		return 0;
	if (mb_ipv4_tuple(skb, ip4, &tuple, tcp_flags) != MB_L4_TRACKED)
		return 0;
	key->saddr = tuple.saddr;
	key->daddr = tuple.daddr;
	key->sport = tuple.sport;
	key->dport = tuple.dport;
	key->proto = tuple.nexthdr;
	key->dir = dir;
	*l4_off = ETH_HLEN + ip4->ihl * 4;
	return 1;
}

/*
 * The reply direction: a packet the NAT knows as a backend's reply is
 * turned into the frontend's (bpf_host.c egress; bpf_overlay.c for
 * replies of backends on other nodes, addressed to this node). 1 when
 * translated, 0 when it is none, < 0 on a rewrite failure.
 */
static __always_inline int mb_np_reverse(struct __sk_buff *skb)
{
	struct mb_lb4_nat_key key = {};
	struct mb_lb4_nat *nat;
	__u32 l4_off = 0;
	__u8 tcp_flags;

	if (!mb_np_tuple(skb, &key, &l4_off, &tcp_flags, MB_LB_NAT_REPLY))
		return 0;
	nat = mb_lb4_nat_v1.lookup(&key);
	if (!nat)
		return 0;
	if (mb_np_apply(skb, l4_off, &key, nat) < 0)
		return -1;
	return 1;
}

/*
 * Send a reply mb_np_reverse() translated (from the overlay) straight out
 * of the device towards the client: its source is now a frontend, often
 * the node's own address, which the stack would drop as a martian on the
 * way in. The FIB gives the device and next hop; without a neighbour entry
 * the kernel resolves it (bpf_redirect_neigh).
 */
static __always_inline int mb_np_send_out(struct __sk_buff *skb)
{
	struct bpf_fib_lookup fib = {};
	struct iphdr *ip4 = mb_ipv4_header(skb);
	int rc;

	if (!ip4)
		return TC_ACT_SHOT;
	fib.family = 2; /* AF_INET */
	fib.tos = ip4->tos;
	fib.l4_protocol = ip4->protocol;
	fib.tot_len = mb_htons(ip4->tot_len);
	fib.ipv4_src = ip4->saddr;
	fib.ipv4_dst = ip4->daddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_DIRECT);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, fib.dmac, 6, 0) < 0 || bpf_skb_store_bytes(skb, 6, fib.smac, 6, 0) < 0)
			return TC_ACT_SHOT;
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return mb_redirect_neigh(fib.ifindex, 0, 0, 0);
	return TC_ACT_SHOT;
}

/* Fold a 32-bit one's complement sum into a checksum. */
static __always_inline __u16 mb_np_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~(__u16)sum;
}

struct mb_np_reply_hdr {
	struct ethhdr eth;
	struct iphdr ip;
} __attribute__((packed));

/* Ethernet and IPv4 headers of an answer to the packet of `key`, from its frontend. */
static __always_inline void mb_np_reply_hdr(struct mb_np_reply_hdr *out, const struct ethhdr *eth,
					    const struct mb_lb4_nat_key *key, __u8 proto, __u16 total)
{
	mb_mac_copy(out->eth.h_dest, eth->h_source);
	mb_mac_copy(out->eth.h_source, eth->h_dest);
	out->eth.h_proto = mb_htons(ETH_P_IP);
	out->ip.version = 4;
	out->ip.ihl = 5;
	out->ip.tot_len = mb_htons(total);
	out->ip.ttl = 64;
	out->ip.protocol = proto;
	out->ip.saddr = key->daddr;
	out->ip.daddr = key->saddr;
	out->ip.check = 0;
	out->ip.check = mb_np_fold(bpf_csum_diff(0, 0, (__be32 *)&out->ip, sizeof(out->ip), 0));
}

/*
 * Refuse the packet of `key` (no usable backend): TCP gets a RST (a SYN's
 * sequence number acknowledged), UDP an ICMP port unreachable quoting it,
 * sent back out of the device. Returns a tc verdict.
 */
static __always_inline int mb_np_refuse(struct __sk_buff *skb, const struct mb_lb4_nat_key *key, __u32 l4_off,
					__u8 tcp_flags)
{
	struct ethhdr eth_in;
	struct mb_np_reply_hdr hdr = {};
	__u32 ifindex = skb->ifindex;

	if (l4_off != ETH_HLEN + sizeof(struct iphdr))
		return TC_ACT_SHOT; /* IP options: not worth an answer */
	if (bpf_skb_load_bytes(skb, 0, &eth_in, sizeof(eth_in)) < 0)
		return TC_ACT_SHOT;
	mb_lb_count(MB_LB_STAT_REFUSED);
	if (key->proto == MB_IPPROTO_TCP) {
		struct mb_tcphdr in, rst = {};
		struct { __be32 saddr, daddr; __u8 zero, proto; __be16 len; } pseudo = {};
		__u64 sum;

		if (tcp_flags & MB_TCP_RST)
			return TC_ACT_SHOT; /* never answer a RST */
		if (bpf_skb_load_bytes(skb, l4_off, &in, sizeof(in)) < 0)
			return TC_ACT_SHOT;
		rst.sport = key->dport;
		rst.dport = key->sport;
		rst.data_offset = 5 << 4;
		if (tcp_flags & MB_TCP_ACK) {
			rst.seq = in.ack_seq;
			rst.flags = MB_TCP_RST;
		} else {
			__u32 payload = skb->len - l4_off - ((in.data_offset >> 4) * 4);

			rst.ack_seq = mb_htonl(__builtin_bswap32(in.seq) + payload +
					       ((tcp_flags & MB_TCP_SYN) ? 1 : 0) + ((tcp_flags & MB_TCP_FIN) ? 1 : 0));
			rst.flags = MB_TCP_RST | MB_TCP_ACK;
		}
		pseudo.saddr = key->daddr;
		pseudo.daddr = key->saddr;
		pseudo.proto = MB_IPPROTO_TCP;
		pseudo.len = mb_htons(sizeof(rst));
		sum = bpf_csum_diff(0, 0, (__be32 *)&pseudo, sizeof(pseudo), 0);
		sum = bpf_csum_diff(0, 0, (__be32 *)&rst, sizeof(rst), sum);
		rst.check = mb_np_fold(sum);
		mb_np_reply_hdr(&hdr, &eth_in, key, MB_IPPROTO_TCP, sizeof(hdr.ip) + sizeof(rst));
		if (bpf_skb_change_tail(skb, sizeof(hdr) + sizeof(rst), 0) < 0)
			return TC_ACT_SHOT;
		if (bpf_skb_store_bytes(skb, 0, &hdr, sizeof(hdr), 0) < 0 ||
		    bpf_skb_store_bytes(skb, sizeof(hdr), &rst, sizeof(rst), 0) < 0)
			return TC_ACT_SHOT;
	} else {
		struct {
			__u8 type, code;
			__sum16 check;
			__u32 unused;
			__u8 quote[sizeof(struct iphdr) + 8];
		} __attribute__((packed)) icmp = {};

		/* The quote: the refused packet's IP header and its first 8 bytes of UDP. */
		if (bpf_skb_load_bytes(skb, ETH_HLEN, icmp.quote, sizeof(icmp.quote)) < 0)
			return TC_ACT_SHOT;
		icmp.type = MB_ICMP_DEST_UNREACH;
		icmp.code = 3; /* port unreachable */
		icmp.check = mb_np_fold(bpf_csum_diff(0, 0, (__be32 *)&icmp, sizeof(icmp), 0));
		mb_np_reply_hdr(&hdr, &eth_in, key, MB_IPPROTO_ICMP, sizeof(hdr.ip) + sizeof(icmp));
		if (bpf_skb_change_tail(skb, sizeof(hdr) + sizeof(icmp), 0) < 0)
			return TC_ACT_SHOT;
		if (bpf_skb_store_bytes(skb, 0, &hdr, sizeof(hdr), 0) < 0 ||
		    bpf_skb_store_bytes(skb, sizeof(hdr), &icmp, sizeof(icmp), 0) < 0)
			return TC_ACT_SHOT;
	}
	return bpf_redirect(ifindex, 0);
}

/*
 * A free source port on the node's address for a flow SNATed towards
 * `backend`: the client's own if its reply entry is free, else a few
 * derived ones. 0: none found (the flow is refused rather than mixed up).
 */
static __always_inline __be16 mb_np_snat_port(struct mb_lb4_nat_key *reply, __u32 hash)
{
	__be16 port = reply->dport;
	int i;

#pragma unroll
	for (i = 0; i < MB_NP_SNAT_TRIES; i++) {
		reply->dport = port;
		if (!mb_lb4_nat_v1.lookup(reply))
			return port;
		port = mb_htons(32768 + (hash >> (i * 4)) % 28232); /* the kernel's ephemeral range */
	}
	return 0;
}

/*
 * The TRANSLATION event of a new per-packet flow (rate-limited like every
 * event): frontend (source fields) -> backend (destination fields), as the
 * socket hooks emit it, the frontend's id in rule_ref, the device in
 * ifindex and the client's address in netns_cookie (its low 32 bits, network
 * order: no client namespace here), so the agent names the Service for the
 * connection's later flows too. On the stack (a few tens of bytes) rather
 * than in the per-CPU scratch record, which nothing else here uses.
 */
static __always_inline void mb_np_event(const struct mb_lb4_nat_key *key, const struct mb_lb4_nat *fwd,
					__u32 ifindex, __u32 len)
{
	struct mb_flow_event ev = {};
	struct mb_event_config *cfg = mb_events_on();

	if (!cfg)
		return;
	ev.ts_ns = bpf_ktime_get_ns();
	ev.saddr = key->daddr;
	ev.sport = key->dport;
	ev.daddr = fwd->daddr;
	ev.dport = fwd->dport;
	ev.nexthdr = key->proto;
	ev.type = MB_EVENT_TRANSLATION;
	ev.direction = MB_DIR_INGRESS;
	ev.verdict = MB_VERDICT_FORWARDED;
	ev.reason = MB_FORWARDED;
	ev.rule_ref = fwd->rev_nat_index;
	ev.ifindex = ifindex;
	ev.len = len;
	ev.count = 1;
	ev.netns_cookie = (__u32)key->saddr;
	mb_event_submit(cfg, &ev);
}

/*
 * Device ingress: a packet for a per-packet frontend goes to its backend.
 * Anything else passes untouched. Returns a tc verdict.
 */
static __always_inline int mb_np_forward(struct __sk_buff *skb)
{
	struct mb_lb4_nat_key key = {}, reply = {};
	struct mb_lb4_nat fwd = {}, back = {};
	struct mb_lb4_key fkey = {};
	struct mb_lb4_service *svc;
	struct mb_lb4_backend *backend = 0;
	struct mb_lb4_nat *nat;
	struct mb_node_config *cfg;
	struct mb_ipcache_value *remote = 0;
	__u32 l4_off = 0, backend_id = 0, hash;
	__u8 tcp_flags = 0;

	if (!mb_np_tuple(skb, &key, &l4_off, &tcp_flags, MB_LB_NAT_FORWARD))
		return TC_ACT_OK;
	nat = mb_lb4_nat_v1.lookup(&key);
	if (nat && mb_lb4_member_backend(nat->backend_id, nat->rev_nat_index)) {
		/* Established: same backend while it serves the frontend. */
		if (nat->flags & MB_LB_NAT_F_SNAT)
			remote = mb_ipcache_lookup(nat->daddr);
		if (mb_np_apply(skb, l4_off, &key, nat) < 0)
			return TC_ACT_SHOT;
		if (remote && remote->tunnel_endpoint)
			return mb_overlay_send(skb, remote->tunnel_endpoint, MB_IDENTITY_REMOTE_NODE, skb->len);
		return TC_ACT_OK;
	}
	fkey.address = key.daddr;
	fkey.dport = key.dport;
	fkey.proto = key.proto;
	fkey.scope = MB_LB_SCOPE_EXTERNAL;
	svc = mb_lb4_services_v1.lookup(&fkey);
	if (!svc || !(svc->flags & MB_NP_PER_PACKET))
		return TC_ACT_OK; /* not ours: a ClusterIP from outside, or the node's own traffic */
	if (!svc->count)
		goto refuse;
	hash = mb_np_hash(key.saddr, key.daddr, key.sport, key.dport, key.proto);
	if (svc->flags & MB_LB_F_AFFINITY)
		backend = mb_lb4_select(&fkey, svc, key.saddr, MB_LB_CLIENT_IP, 0, 0, &backend_id);
	else
		backend = mb_np_maglev(svc->rev_nat_index, hash, &backend_id);
	if (!backend)
		backend = mb_lb4_slot_backend(&fkey, svc, hash, &backend_id);
	if (!backend) {
		mb_lb_count(MB_LB_STAT_FAILED);
		goto refuse;
	}
	fwd.saddr = key.saddr;
	fwd.sport = key.sport;
	fwd.daddr = backend->address;
	fwd.dport = backend->port;
	fwd.backend_id = backend_id;
	fwd.rev_nat_index = svc->rev_nat_index;
	if (!(backend->flags & MB_LB_BACKEND_F_LOCAL)) {
		/* Another node's backend: from this node's address, so its reply comes back here;
		 * straight into the tunnel (the stack would take a packet from its own address,
		 * arriving on a device, for a martian). */
		cfg = mb_node_config();
		remote = mb_ipcache_lookup(backend->address);
		if (!cfg || !cfg->node_ip || !remote || !remote->tunnel_endpoint)
			goto refuse;
		fwd.saddr = cfg->node_ip;
		fwd.flags = MB_LB_NAT_F_SNAT;
	}
	reply.saddr = fwd.daddr;
	reply.daddr = fwd.saddr;
	reply.sport = fwd.dport;
	reply.dport = key.sport;
	reply.proto = key.proto;
	reply.dir = MB_LB_NAT_REPLY;
	if (fwd.flags & MB_LB_NAT_F_SNAT) {
		fwd.sport = mb_np_snat_port(&reply, hash);
		if (!fwd.sport)
			goto refuse;
	}
	back.saddr = key.daddr;
	back.sport = key.dport;
	back.daddr = key.saddr;
	back.dport = key.sport;
	back.backend_id = backend_id;
	back.rev_nat_index = svc->rev_nat_index;
	back.flags = fwd.flags;
	if (mb_lb4_nat_v1.update(&reply, &back) < 0 || mb_lb4_nat_v1.update(&key, &fwd) < 0)
		return TC_ACT_SHOT;
	mb_lb_count(MB_LB_STAT_TRANSLATED);
	mb_np_event(&key, &fwd, skb->ifindex, skb->len);
	if (mb_np_apply(skb, l4_off, &key, &fwd) < 0)
		return TC_ACT_SHOT;
	if (remote)
		return mb_overlay_send(skb, remote->tunnel_endpoint, MB_IDENTITY_REMOTE_NODE, skb->len);
	return TC_ACT_OK; /* a local backend: the stack routes it to the pod */
refuse:
	/* One call site (compile time: the answer is built inline in each). */
	return mb_np_refuse(skb, &key, l4_off, tcp_flags);
}

#endif /* MB_LIB_NODEPORT_H */
