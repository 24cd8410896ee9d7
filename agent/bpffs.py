"""Make sure the pin root lives on the host's bpffs, whatever mount namespace we run in.

`ip netns exec` gives the agent a private mount namespace with a fresh /sys, which hides
/sys/fs/bpf. Pins made on a new bpffs instance would vanish with the agent and a restarted
agent would start from empty maps, so the agent binds the host's instance (seen through
PID 1's root) into its own namespace instead. Nothing outside the agent's namespace changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger("membrane.bpffs")

BPF_FS_MAGIC = 0xCAFE4A11
_MS_BIND = 4096


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


def ensure_bpffs(pin_root: Path, mount_point: Path = Path("/sys/fs/bpf")) -> str:
    """Returns how the bpffs was found: "present", "bound-host" or "mounted-new"."""
    if pin_root.is_relative_to(mount_point) is False:
        return "present" if is_bpffs(pin_root.parent) else "unchecked"
    if is_bpffs(mount_point):
        return "present"
    host = Path("/proc/1/root") / mount_point.relative_to("/")
    mount_point.mkdir(parents=True, exist_ok=True)
    if is_bpffs(host):
        _mount(str(host), str(mount_point), None, _MS_BIND)
        log.info("bound the host bpffs into the agent's mount namespace", extra={"fields": {"at": str(mount_point)}})
        return "bound-host"
    _mount("bpf", str(mount_point), "bpf", 0)
    log.warning("mounted a new bpffs: pins will not outlive this mount namespace",
                extra={"fields": {"at": str(mount_point)}})
    return "mounted-new"
