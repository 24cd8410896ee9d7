/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bpf_xdp.c: the prefilter on the node's devices (--devices), run by the driver (native XDP)
 * or at the start of the stack (generic XDP) before anything else sees a packet.
 *
 * It drops what the operator said to drop: sources in the CIDR deny lists, packets matching
 * drop rules, packets over a ratelimit rule's rate (lib/prefilter.h). Everything else passes,
 * unchanged, to the stack (and to bpf_lxc.c / bpf_overlay.c behind it). Rules live in maps:
 * a change needs neither a recompile nor a reload, and the rule set in force switches in one
 * word (mb_prefilter_config_v1), so a packet is judged by the old set or the new one.
 */
#include "lib/common.h"
#include "types.h"
#include "maps.h"
#include "lib/metrics.h"
#include "lib/events.h"
#include "lib/prefilter.h"

/* Hook: XDP on the node's devices (native where the driver has it, generic otherwise). */
int xdp_prefilter(struct xdp_md *ctx)
{
	return mb_prefilter(ctx);
}
