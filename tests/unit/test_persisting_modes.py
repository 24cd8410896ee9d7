"""State files are root-only (0600 in 0700 directories) whatever the umask, and the modes an
older version left are repaired."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cluster_persisting import StateFile
from agent.persisting import make_private, read_json, write_json


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o000)  # the worst case: everything would be world-writable
    yield
    os.umask(old)


def test_written_files_and_created_directories_are_private(tmp_path: Path, open_umask: None) -> None:
    target = tmp_path / "state" / "endpoints" / "pod.json"
    write_json(target, {"ip": "10.0.0.2"})
    assert read_json(target) == {"ip": "10.0.0.2"}
    assert mode(target) == 0o600
    assert mode(target.parent) == 0o700 and mode(target.parent.parent) == 0o700
    target.chmod(0o644)
    write_json(target, {"ip": "10.0.0.3"})  # a rewrite is private again
    assert mode(target) == 0o600
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_the_cluster_journal_is_private(tmp_path: Path, open_umask: None) -> None:
    state = StateFile(tmp_path / "state")
    state.append(1, "s", [], {})
    state.write_base(1, "s", {})
    assert mode(state.journal) == 0o600 and mode(state.base) == 0o600 and mode(tmp_path / "state") == 0o700


def test_make_private_repairs_what_is_open_and_follows_no_symlink(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "endpoints").mkdir(parents=True)
    root.chmod(0o755)
    (root / "endpoints").chmod(0o777)
    (root / "ipam.json").write_text("{}")
    (root / "ipam.json").chmod(0o644)
    (root / "endpoints" / "a.json").write_text("{}")
    (root / "endpoints" / "a.json").chmod(0o666)
    outside = tmp_path / "outside"
    outside.write_text("not ours")
    outside.chmod(0o644)
    (root / "link").symlink_to(outside)
    assert make_private(root) == 4
    assert mode(root) == 0o700 and mode(root / "endpoints") == 0o700
    assert mode(root / "ipam.json") == 0o600 and mode(root / "endpoints" / "a.json") == 0o600
    assert mode(outside) == 0o644
    assert make_private(root) == 0
    fresh = tmp_path / "new" / "dir"
    make_private(fresh)
    assert mode(fresh) == 0o700
