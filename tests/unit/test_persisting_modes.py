"""The modes an older version left in the state dir are repaired (state.db itself is private
whatever the umask: tests/unit/test_state_store.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.persisting import make_private


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0o000)  # the worst case: everything would be world-writable
    yield
    os.umask(old)


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
