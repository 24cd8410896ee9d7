/* SPDX-License-Identifier: Apache-2.0 */
/*
 * l4.h: the few L4 definitions the datapath needs, declared here rather than
 * taken from linux/tcp.h, icmp.h, in.h (slow to compile under bcc, see
 * common.h). Layouts follow RFC 793 / RFC 768 / RFC 9260 / RFC 792.
 */
#ifndef MB_LIB_L4_H
#define MB_LIB_L4_H

#include "common.h"

#define MB_IPPROTO_ICMP 1
#define MB_IPPROTO_TCP 6
#define MB_IPPROTO_UDP 17
#define MB_IPPROTO_SCTP 132

#define MB_ICMP_ECHOREPLY 0
#define MB_ICMP_ECHO 8
#define MB_ICMP_DEST_UNREACH 3
#define MB_ICMP_TIME_EXCEEDED 11
#define MB_ICMP_PARAMETERPROB 12

#define MB_TCP_FIN 0x01
#define MB_TCP_SYN 0x02
#define MB_TCP_RST 0x04
#define MB_TCP_ACK 0x10

struct mb_tcphdr {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack_seq;
	__u8 data_offset; /* high nibble, in 32-bit words */
	__u8 flags;       /* CWR ECE URG ACK PSH RST SYN FIN */
	__be16 window;
	__sum16 check;
	__be16 urg_ptr;
};

struct mb_udphdr {
	__be16 sport;
	__be16 dport;
	__be16 len;
	__sum16 check;
};

/* SCTP common header (RFC 9260 3.1): the ports are where TCP/UDP have them. */
struct mb_sctphdr {
	__be16 sport;
	__be16 dport;
	__be32 vtag;
	__le32 checksum;
};

struct mb_icmp_echo {
	__u8 type;
	__u8 code;
	__sum16 check;
	__be16 id;       /* only meaningful for echo request/reply */
	__be16 sequence;
};

#endif /* MB_LIB_L4_H */
