"""runtimeConfig.bandwidth (the CNI bandwidth capability) parsed into token-bucket sizes."""

from __future__ import annotations

from typing import Any

import pytest

from membrane.bandwidth import MAX_BURST_SECONDS, BandwidthLimits, Shaper, parse_bandwidth
from membrane.cni_types import INVALID_CONFIG, CniError


def test_no_limits() -> None:
    assert parse_bandwidth(None, 1500) is None
    assert parse_bandwidth({}, 1500) is None
    assert parse_bandwidth({"portMappings": []}, 1500) is None
    assert parse_bandwidth({"bandwidth": {}}, 1500) is None
    assert parse_bandwidth({"bandwidth": {"ingressRate": 0, "egressRate": 0}}, 1500) is None


def test_sizes_in_bytes_with_queue_room() -> None:
    limits = parse_bandwidth({"bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 800_000}}, 1500)
    assert limits == BandwidthLimits(ingress=Shaper(rate=1_250_000, burst=100_000, limit=100_000 + 31_250),
                                     egress=None)
    limits = parse_bandwidth({"bandwidth": {"egressRate": 8_000_000, "egressBurst": 80_000}}, 1500)
    assert limits is not None and limits.ingress is None and limits.egress == Shaper(1_000_000, 10_000, 35_000)


def test_runtime_sized_bursts_are_cut() -> None:
    """containerd passes a burst of 2^32-1 bits: more than the kernel can hold for a slow rate."""
    limits = parse_bandwidth({"bandwidth": {"egressRate": 1_000_000, "egressBurst": 2**32 - 1}}, 1500)
    assert limits is not None and limits.egress is not None
    assert limits.egress.burst == 125_000 * MAX_BURST_SECONDS


@pytest.mark.parametrize("section,field", [
    ({"ingressRate": 10_000_000}, "ingressBurst"),
    ({"egressBurst": 10_000}, "egressBurst"),
    ({"ingressRate": -1, "ingressBurst": 1}, "ingressRate"),
    ({"ingressRate": "10M", "ingressBurst": 100_000}, "ingressRate"),
    ({"ingressRate": 1.5e7, "ingressBurst": 100_000}, "ingressRate"),
    ({"ingressRate": True, "ingressBurst": 100_000}, "ingressRate"),
    ({"egressRate": 100, "egressBurst": 100_000}, "egressRate"),
    ({"egressRate": 2**40, "egressBurst": 100_000}, "egressRate"),
    ({"egressRate": 10_000_000, "egressBurst": 8_000}, "egressBurst"),  # less than one packet
    ({"ingressrate": 10}, "ingressrate"),
])
def test_bad_values_name_the_field(section: dict[str, Any], field: str) -> None:
    with pytest.raises(CniError) as err:
        parse_bandwidth({"bandwidth": section}, 1500)
    assert err.value.code == INVALID_CONFIG and f"runtimeConfig.bandwidth.{field}" in err.value.msg


@pytest.mark.parametrize("runtime_config", [[], {"bandwidth": []}, {"bandwidth": "10M"}])
def test_bad_shapes(runtime_config: Any) -> None:
    with pytest.raises(CniError) as err:
        parse_bandwidth(runtime_config, 1500)
    assert err.value.code == INVALID_CONFIG
