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


def test_policy_revision_through_reused_tables_and_after_a_reload(pin_root: Path) -> None:
    """The loader keeps one bcc table per map while loaded (no type decoding per call): bumps
    land in the pinned map, a reload of the same object gets fresh tables on the new fds, and
    another agent's loader reads the same revision."""
    from membrane.agent.datapath import Datapath

    dp = Datapath(pin_root)
    dp.load()
    try:
        start = dp.policy_revision()
        assert [dp.bump_policy_revision() for _ in range(3)] == [start + 1, start + 2, start + 3]
        dp.close()
        held = [os.open("/dev/null", os.O_RDONLY) for _ in range(64)]  # the first load's fd numbers
        try:
            dp.load()  # its maps on new fds: a table of the first load would act on /dev/null
        finally:
            for fd in held:
                os.close(fd)
        assert dp.policy_revision() == start + 3
        assert dp.bump_policy_revision() == start + 4
        other = Datapath(pin_root)
        other.load()
        try:
            assert other.policy_revision() == start + 4
        finally:
            other.close()
    finally:
        dp.close()
        dp.unpin()
