"""Make sure the pin root lives on the host's bpffs, whatever mount namespace we run in.

`ip netns exec` gives the agent a private mount namespace with a fresh /sys, which hides
/sys/fs/bpf. Pins made on a new bpffs instance would vanish with the agent and a restarted
agent would start from empty maps, so the agent pins on the host's instance instead, reached
through the root of the process that launched it (/proc/PID/root, which is in the original
mount namespace). Nothing outside the agent's namespace changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger("membrane.bpffs")

BPF_FS_MAGIC = 0xCAFE4A11


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


def _fs_type(path: Path) -> int | None:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = _StatFs()
    if libc.statfs(str(path).encode(), ctypes.byref(buf)) != 0:
        return None
    return buf.f_type & 0xFFFFFFFF


def is_bpffs(path: Path) -> bool:
    return _fs_type(path) == BPF_FS_MAGIC


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _ancestors() -> list[int]:
    """Our parent, its parent, ... up to PID 1: whoever started us sees the host's mounts."""
    chain, pid = [], os.getppid()
    while pid > 1 and pid not in chain and len(chain) < 32:
        chain.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return chain + [1]


def _outside_views(mount_point: Path) -> list[Path]:
    # /proc/PID/root of a process in the original mount namespace shows the bpffs that
    # `ip netns exec` hid; PID 1 may be out of reach in a sandbox, our launcher never is.
    return [Path(f"/proc/{pid}/root") / mount_point.relative_to("/") for pid in _ancestors()]


def ensure_bpffs(pin_root: Path, mount_point: Path = Path("/sys/fs/bpf")) -> Path:
    """The path to pin under: `pin_root` itself, or the same place on the host's bpffs seen
    through the launcher's root when `ip netns exec` hid it."""
    if not pin_root.is_relative_to(mount_point) or is_bpffs(mount_point):
        return pin_root
    for host in _outside_views(mount_point):
        if is_bpffs(host):
            # A mount from another namespace cannot be bound here (EINVAL); its path can be used.
            log.info("using the host bpffs through the launcher's root",
                     extra={"fields": {"at": str(host)}})
            return str(host / pin_root.relative_to(mount_point))
    mount_point.mkdir(parents=True, exist_ok=True)
    _mount("bpf", str(mount_point), "bpf", 0)
    log.warning("mounted a new bpffs: pins will not outlive this mount namespace",
                extra={"fields": {"at": str(mount_point)}})
    return pin_root
