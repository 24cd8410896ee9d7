/* SPDX-License-Identifier: Apache-2.0 */
/* common.h: kernel headers, byte order and small helpers used by every file. */
#ifndef MB_LIB_COMMON_H
#define MB_LIB_COMMON_H

/*
 * Only cheap UAPI headers: under bcc (__KERNEL__ defined) linux/if_arp.h,
 * tcp.h, icmp.h and in.h drag in large parts of the kernel headers and
 * multiply the compile time (6 s instead of 0.7 s). What we need from them
 * is defined in lib/l4.h and lib/eth.h instead.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* Constant-foldable byte swaps (the datapath only runs little or big endian, never mixed). */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define mb_htons(x) ((__be16)__builtin_bswap16((__u16)(x)))
#define mb_htonl(x) ((__be32)__builtin_bswap32((__u32)(x)))
#else
#define mb_htons(x) ((__be16)(x))
#define mb_htonl(x) ((__be32)(x))
#endif

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Byte-wise MAC compare: MACs in packets and map values are not aligned. */
static __always_inline int mb_mac_equal(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] &&
	       a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

static __always_inline void mb_mac_copy(__u8 *dst, const __u8 *src)
{
	dst[0] = src[0]; dst[1] = src[1]; dst[2] = src[2];
	dst[3] = src[3]; dst[4] = src[4]; dst[5] = src[5];
}

#endif /* MB_LIB_COMMON_H */
