"""Program families: a datapath compiles and loads only the families asked for (the pod family
always), creates and pins every map whatever the families (so the managers work unchanged and
a later start with more families reuses the very same maps), and a program of a family it did
not load is refused with a clear DatapathError naming the family."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from membrane.agent.datapath.layout import PINNED_NAMES
from membrane.agent.datapath.loading import (
    ALL_FAMILIES,
    ENTRY_FILES,
    FAMILIES,
    SOCK_PROGRAMS,
    Datapath,
    DatapathError,
    families_for,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

POD = ("from_container", "to_container", "from_overlay", "to_overlay")


def test_the_agent_asks_for_what_its_flags_attach() -> None:
    assert families_for(devices=False, cgroup_root=False) == {"pod"}
    assert families_for(devices=True, cgroup_root=False) == {"pod", "host", "xdp"}
    assert families_for(devices=False, cgroup_root=True) == {"pod", "sock"}
    assert families_for(devices=True, cgroup_root=True) == ALL_FAMILIES


def test_the_families_cover_every_entry_file_once() -> None:
    assert sorted(ENTRY_FILES) == sorted(p.name for p in (Path(__file__).parents[2] / "bpf").glob("bpf_*.c"))
    assert len(set(ENTRY_FILES)) == len(ENTRY_FILES)


def test_an_unknown_family_is_refused(pin_root: Path) -> None:
    with pytest.raises(DatapathError, match=r"no program family \['quic'\]"):
        Datapath(pin_root, families=["quic"])


def test_pod_family_alone_loads_its_programs_and_pins_every_map(pin_root: Path) -> None:
    dp = Datapath(pin_root, families=())
    assert dp.entry_files() == ("bpf_lxc.c", "bpf_overlay.c")
    dp.load()
    try:
        for name in POD:
            assert dp.program_fd(name) > 0
        for name in ("from_netdev", "to_netdev", "xdp_prefilter", *SOCK_PROGRAMS):
            with pytest.raises(DatapathError) as refused:
                dp.program_fd(name)
            message = str(refused.value)
            assert f"program {name!r} is in the" in message and "did not load" in message and "\n" not in message
        with pytest.raises(DatapathError, match="no program 'nonesuch'"):
            dp.program_fd("nonesuch")
        assert sorted(p.name for p in pin_root.iterdir() if p.name in PINNED_NAMES) == sorted(PINNED_NAMES)
        dp.check_layouts()  # every map, also those only other families' programs use
        pod_only = dp.maps_info()
    finally:
        dp.close()
    # A later start with every family (e.g. --devices and --cgroup-root added) reuses the same maps.
    everything = Datapath(pin_root)
    everything.load()
    try:
        assert {n: i.map_id for n, i in everything.maps_info().items()} == {n: i.map_id for n, i in pod_only.items()}
        for family in FAMILIES.values():
            for name in family.programs:
                assert everything.program_fd(name) > 0
    finally:
        everything.close()


def test_devices_load_host_and_xdp_programs_only(pin_root: Path) -> None:
    dp = Datapath(pin_root, families=families_for(devices=True, cgroup_root=False))
    assert dp.entry_files() == ("bpf_lxc.c", "bpf_overlay.c", "bpf_host.c", "bpf_xdp.c")
    dp.load()
    try:
        for name in (*POD, "from_netdev", "to_netdev", "xdp_prefilter"):
            assert dp.program_fd(name) > 0
        with pytest.raises(DatapathError, match="'sock' family"):
            dp.program_fd("mb_sock4_connect")
    finally:
        dp.close()


def test_maps_are_usable_while_the_programs_load_on_another_thread(pin_root: Path) -> None:
    """The agent's start: compile (maps), then the programs load on the compile's thread while
    the main thread restores the maps; no program before load_programs."""
    import threading
    from ipaddress import IPv4Network

    from membrane.agent.datapath.ipcache import IpcacheEntry

    dp = Datapath(pin_root, families=())
    dp.compile()
    try:
        with pytest.raises(DatapathError, match="programs not loaded"):
            dp.program_fd("from_container")
        errors: list[BaseException] = []

        def load() -> None:
            try:
                dp.load_programs()
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        loader = threading.Thread(target=load)
        loader.start()
        written = {IPv4Network(f"10.77.{i // 250}.{i % 250}/32"): IpcacheEntry(100 + i) for i in range(500)}
        dp.update_map("ipcache", written)
        assert dp.ipcache() == written
        loader.join(60)
        assert not loader.is_alive() and errors == []
        for name in POD:
            assert dp.program_fd(name) > 0
        with pytest.raises(DatapathError, match="already loaded"):
            dp.load_programs()
    finally:
        dp.close()
