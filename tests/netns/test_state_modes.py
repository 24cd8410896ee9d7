"""A real agent keeps its state root-only: modes left open are repaired at start, and the
files written for a pod are 0600 in 0700 directories."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from membrane_testkit.lab.node import LabNode


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


def test_state_is_private_and_open_modes_are_repaired(make_node: Any) -> None:
    node: LabNode = make_node(start=False)
    state = node.workdir / "state"
    (state / "endpoints").mkdir(parents=True)
    state.chmod(0o755)
    (state / "endpoints").chmod(0o755)
    (state / "ipam.json").write_text('{"cursor": 0}')  # as an older version left it
    (state / "ipam.json").chmod(0o644)
    node.start_agent()
    node.add_pod("a")
    node.api("apply", objects=[{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "m"}}])
    found = modes(state)
    assert "state.db" in found and "pre-sqlite/ipam.json" in found  # the old file kept as a backup
    wrong = {name: oct(m) for name, m in found.items()
             if m != (0o700 if (state / name).is_dir() else 0o600)}
    assert not wrong, wrong
    assert "state directory modes repaired" in node.log_path.read_text()
