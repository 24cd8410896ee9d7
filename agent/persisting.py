"""Private state: the state dir and what is in it are root-only.

The state holds pod IPs, MACs, netns paths, identities and the objects applied: directories are
created 0700 (and state.db 0600, agent/state_db.py) whatever the umask, and `make_private`
repairs the modes a previous version (or an admin) left.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Create `path` and its missing parents 0700; an existing directory is left as it is."""
    if path.is_dir():
        return
    if path.parent != path:
        private_dir(path.parent)
    try:
        path.mkdir(mode=DIR_MODE)
    except FileExistsError:  # a concurrent writer made it
        return
    os.chmod(path, DIR_MODE)  # mkdir's mode is filtered through the umask


def make_private(root: Path) -> int:
    """Make `root` and every directory under it 0700 and every file 0600; returns how many
    modes were changed. Symlinks are not followed."""
    changed = 0
    private_dir(root)
    for entry in [root, *root.rglob("*")]:
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        want = DIR_MODE if stat.S_ISDIR(st.st_mode) else FILE_MODE
        if stat.S_IMODE(st.st_mode) != want:
            os.chmod(entry, want)
            changed += 1
    return changed
