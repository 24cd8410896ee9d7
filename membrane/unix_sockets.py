"""Unix sockets that are root-only from the first instant: bound under a temporary name in a
private (0700) directory, set to 0600, then renamed into place.

A socket's mode on bind comes from the process umask; chmod after bind leaves a window in
which the socket exists with that mode, and anyone who connects during it keeps the
connection. Binding where nobody else can reach (a fresh 0700 directory next to the final
path, so the rename stays on one filesystem) closes the window: the final path only ever
names a socket that is already 0600.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

MODE = 0o600


def bind_private(path: Path, bind: Callable[[str], T], mode: int = MODE) -> T:
    """Call `bind(temporary_path)` (which must create the socket there), then give the socket
    `mode` and move it to `path`; returns what `bind` returned. The parent directory is created
    (0755 if missing: the socket's own mode is what protects it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".bind-", dir=path.parent))  # mkdtemp: mode 0700
    temporary = private / "socket"
    try:
        result = bind(str(temporary))
        os.chmod(temporary, mode)
        os.replace(temporary, path)
        return result
    finally:
        try:
            temporary.unlink()
        except FileNotFoundError:
            pass
        private.rmdir()


def remove_stale(path: Path, what: str = "another process") -> None:
    """Unlink a socket a killed process left behind; raise OSError if something still answers."""
    if not (path.exists() or path.is_symlink()):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise OSError(f"{what} is serving {path}")
