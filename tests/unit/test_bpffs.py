"""Where the agent pins when `ip netns exec` hid /sys/fs/bpf: order of the processes looked
through, and the refusal (one line, the fix) when no bpffs that outlives the agent exists."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from membrane.agent import bpffs


def test_candidates_launcher_first_then_oldest_and_never_our_namespace() -> None:
    ns = {10: "mnt:[1]", 20: "mnt:[1]", 30: "mnt:[2]", 40: "mnt:[1]", 50: None}
    started = {10: 500, 20: 5, 30: 1, 40: 100, 50: 0}
    order = bpffs.candidates("mnt:[2]", [40], [10, 20, 30, 40, 50], ns.get, started.__getitem__)
    assert order == [40, 20, 10]  # launcher, then by age; same namespace (30) and gone (50) skipped


def test_refuses_in_a_private_namespace_without_a_reachable_bpffs(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpffs, "_ancestors", list)
    monkeypatch.setattr(bpffs, "_all_pids", lambda: [os.getpid()])
    mounted: list[str] = []
    monkeypatch.setattr(bpffs, "_mount", lambda *args: mounted.append(args[1]))
    with pytest.raises(bpffs.BpffsUnavailable) as err:
        bpffs.ensure_bpffs(tmp_path / "membrane" / "node1", mount_point=tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and "mount -t bpf bpf" in message
    assert mounted == []  # never a bpffs that would die with the agent


def test_pin_root_elsewhere_is_left_alone(tmp_path: Path) -> None:
    assert bpffs.ensure_bpffs(tmp_path / "pins", mount_point=Path("/sys/fs/bpf")) == tmp_path / "pins"
