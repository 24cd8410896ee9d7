"""Pinned maps outlive the Datapath object (an agent restart reopens them)."""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from membrane.agent.datapath import EndpointEntry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_endpoint_survives_a_restart(pin_root: Path) -> None:
    from membrane.agent.datapath import Datapath
    from membrane.agent.datapath.layout import PINNED_NAMES

    ip = IPv4Address("10.201.0.5")
    entry = EndpointEntry(ifindex=7, endpoint_id=5, identity=300, pod_mac="02:00:00:00:05:01", host_mac="02:00:00:00:05:02")

    first = Datapath(pin_root)
    first.load()
    try:
        first.update_map("endpoints", {ip: entry})
        ids_before = {name: info.map_id for name, info in first.maps_info().items()}
    finally:
        first.close()
    assert sorted(p.name for p in pin_root.iterdir()) == sorted(PINNED_NAMES)

    second = Datapath(pin_root)
    second.load()
    try:
        assert second.endpoints() == {ip: entry}
        # The very same kernel maps, not fresh copies with the data re-read.
        assert {name: info.map_id for name, info in second.maps_info().items()} == ids_before
    finally:
        second.close()
        second.unpin()
    assert not pin_root.exists()
