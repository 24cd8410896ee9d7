"""Pod bandwidth limits: the CNI `bandwidth` capability (pure: parsing, validation, shaper sizes).

Container runtimes turn the pod annotations `kubernetes.io/ingress-bandwidth` and
`kubernetes.io/egress-bandwidth` into `runtimeConfig.bandwidth` for every plugin whose
configuration declares `"capabilities": {"bandwidth": true}`:
`{"ingressRate": bits/s, "ingressBurst": bits, "egressRate": bits/s, "egressBurst": bits}`
(the fields of the reference `bandwidth` plugin). Ingress is traffic into the pod, egress
traffic it sends. The agent shapes each direction with a token bucket filter (TBF); this
module decides the bucket's sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from membrane.cni_types import INVALID_CONFIG, CniError

FIELDS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")
MAX_RATE_BYTES = 2**32 - 1  # TBF's rate field (bytes/s): about 34 Gbit/s
MIN_RATE_BITS = 8_000  # 1 kB/s: below that nothing useful gets through
QUEUE_LATENCY_S = 0.025  # how long a packet may wait in the bucket's queue (as the reference plugin)
# The kernel keeps a bucket's size as transmit time in 32-bit scheduler ticks (64 per
# microsecond, /proc/net/psched): 4.29e9 ticks are 67 s of the rate. Runtimes pass huge
# bursts (containerd: 2^32-1 bits), so a burst longer than this many seconds of the rate is cut.
MAX_BURST_SECONDS = 60
L2_HEADER = 14  # TBF counts frames: a full-size packet is the MTU plus the Ethernet header


@dataclass(frozen=True)
class Shaper:
    """One token bucket: `rate` bytes/s, a bucket of `burst` bytes, at most `limit` bytes queued."""

    rate: int
    burst: int
    limit: int


@dataclass(frozen=True)
class BandwidthLimits:
    ingress: Shaper | None  # into the pod
    egress: Shaper | None  # out of the pod

    def __bool__(self) -> bool:
        return self.ingress is not None or self.egress is not None


def _number(section: dict[str, Any], key: str) -> int:
    value = section.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CniError(INVALID_CONFIG, f"runtimeConfig.bandwidth.{key}: must be a non-negative integer",
                       f"got {value!r}")
    return value


def _shaper(section: dict[str, Any], direction: str, mtu: int) -> Shaper | None:
    rate_key, burst_key = f"{direction}Rate", f"{direction}Burst"
    rate_bits, burst_bits = _number(section, rate_key), _number(section, burst_key)
    if rate_bits == 0:
        if burst_bits:
            raise CniError(INVALID_CONFIG, f"runtimeConfig.bandwidth.{burst_key}: set without {rate_key}")
        return None
    if burst_bits == 0:
        raise CniError(INVALID_CONFIG, f"runtimeConfig.bandwidth.{burst_key}: required when {rate_key} is set")
    if not MIN_RATE_BITS <= rate_bits <= MAX_RATE_BYTES * 8:
        raise CniError(INVALID_CONFIG, f"runtimeConfig.bandwidth.{rate_key}: must be {MIN_RATE_BITS}.."
                       f"{MAX_RATE_BYTES * 8} bits/s", f"got {rate_bits}")
    rate = rate_bits // 8
    burst = burst_bits // 8
    if burst < mtu + L2_HEADER:  # a full-size packet could never leave the bucket
        raise CniError(INVALID_CONFIG, f"runtimeConfig.bandwidth.{burst_key}: must hold one full-size packet "
                       f"(at least {(mtu + L2_HEADER) * 8} bits for MTU {mtu})", f"got {burst_bits}")
    burst = min(burst, rate * MAX_BURST_SECONDS)
    limit = min(int(rate * QUEUE_LATENCY_S) + burst, 2**32 - 1)
    return Shaper(rate=rate, burst=burst, limit=limit)


def parse_bandwidth(runtime_config: Any, mtu: int) -> BandwidthLimits | None:
    """The limits asked for in `runtimeConfig` (None when there are none); CniError(7) names
    the bad field."""
    if runtime_config is None:
        return None
    if not isinstance(runtime_config, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig: must be an object")
    section = runtime_config.get("bandwidth")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise CniError(INVALID_CONFIG, "runtimeConfig.bandwidth: must be an object")
    unknown = sorted(set(section) - set(FIELDS))
    if unknown:
        raise CniError(INVALID_CONFIG, f"runtimeConfig.bandwidth.{unknown[0]}: unknown field",
                       f"known: {', '.join(FIELDS)}")
    limits = BandwidthLimits(ingress=_shaper(section, "ingress", mtu), egress=_shaper(section, "egress", mtu))
    return limits if limits else None
