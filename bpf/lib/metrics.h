/* SPDX-License-Identifier: Apache-2.0 */
/* metrics.h: per-CPU (reason, direction) counters. */
#ifndef MB_LIB_METRICS_H
#define MB_LIB_METRICS_H

#include "common.h"
#include "../maps.h"

static __always_inline void mb_metrics_add(__u8 reason, __u8 direction, __u32 bytes)
{
	struct mb_metrics_key key = { .reason = reason, .direction = direction };
	struct mb_metrics_value *value = mb_metrics_v1.lookup(&key);

	/* Per-CPU value and tc runs with preemption off: plain adds are safe. */
	if (likely(value)) {
		value->packets += 1;
		value->bytes += bytes;
		return;
	}
	struct mb_metrics_value first = { .packets = 1, .bytes = bytes };
	/* BPF_NOEXIST: if another CPU created the key meanwhile, this CPU's
	 * slot of that entry is still zero, so retry the lookup once. */
	if (mb_metrics_v1.insert(&key, &first) == 0)
		return;
	value = mb_metrics_v1.lookup(&key);
	if (value) {
		value->packets += 1;
		value->bytes += bytes;
	}
}

#endif /* MB_LIB_METRICS_H */
