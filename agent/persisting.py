"""Crash-safe, private JSON files: write to a temporary file, fsync, rename.

The agent persists IPAM and endpoint state before it answers kubelet, so a `kill -9` at any
moment leaves either the old or the new file, never half of one. The state holds pod IPs,
MACs, netns paths and identities: files are created 0600 and directories 0700 whatever the
umask, and `make_private` repairs the modes a previous version (or an admin) left.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import IO, Any

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


def open_private(path: Path, mode: str = "w") -> IO[str]:
    """open() for text that creates the file 0600 (an existing file is made 0600 too)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


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


def write_json(path: Path, data: Any) -> None:
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # writers may race
    try:
        with open_private(tmp) as handle:
            # dumps, not dump: only the one-shot path uses the C encoder (dump is pure Python, ~10x slower)
            handle.write(json.dumps(data, separators=(",", ":"), sort_keys=True))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a bad value leaves no temporary behind
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def remove(path: Path, durable: bool = False) -> None:
    """Delete a file if it exists; `durable`: the removal survives a crash once this returns."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
