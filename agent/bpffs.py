"""Make sure the pin root lives on a bpffs that outlives the agent, or refuse to start.

`ip netns exec` gives the agent a private mount namespace with a fresh /sys, which hides
/sys/fs/bpf. A bpffs mounted there would be a new instance that dies with the agent (and with
it every pinned map: a `kill -9` would restart from empty maps), so the agent never does that.
It finds the host's instance instead through `/proc/PID/root` of a process in another mount
namespace that shows a bpffs there: its launcher if still alive, else the oldest such process
(PID 1 when reachable). The launcher of `ip netns exec NODE membrane-agent ... &` usually exits
before the agent gets here, so the launcher alone is not enough.

The directory is opened once and kept open (an O_PATH descriptor) and pins are made under
`/proc/self/fd/N/...`: the path stays valid for the agent's whole life even when the process it
was found through exits. When nothing shows a bpffs, a bpffs is mounted only if this mount
namespace is shared with another process (so the mount outlives the agent); otherwise the
agent refuses to start with the reason and the fix.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .start_refusal import StartRefused

log = logging.getLogger("membrane.bpffs")

BPF_FS_MAGIC = 0xCAFE4A11


class BpffsUnavailable(StartRefused):
    """No bpffs that outlives the agent can be reached: the message says why and the fix."""


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 15)]


def _fs_type(path: Path) -> int | None:
    libc = ctypes.CDLL(None, use_errno=True)
    buf = _StatFs()
    if libc.statfs(str(path).encode(), ctypes.byref(buf)) != 0:
        return None
    return int(buf.f_type) & 0xFFFFFFFF


def is_bpffs(path: Path) -> bool:
    return _fs_type(path) == BPF_FS_MAGIC


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _start_time(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 1 << 62


def _ancestors() -> list[int]:
    """Our parent, its parent, ... (the launcher, when it is still alive)."""
    chain: list[int] = []
    pid: int | None = os.getppid()
    while pid is not None and pid > 1 and pid not in chain and len(chain) < 32:
        chain.append(pid)
        pid = _parent_of(pid)
    return chain


def _mount_ns(pid: int | str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def candidates(own_ns: str | None, ancestors: Iterable[int], pids: Iterable[int],
               mount_ns: Callable[[int], str | None], start_time: Callable[[int], int]) -> list[int]:
    """Processes to look through, best first: ancestors (the launcher meant this host), then
    PID 1 and the oldest processes (the long-lived ones). Ours and our namespace's are skipped:
    they see what we see."""
    me = os.getpid()
    ordered = list(dict.fromkeys([*ancestors, *sorted(pids, key=lambda p: (start_time(p), p))]))
    return [p for p in ordered if p != me and (ns := mount_ns(p)) is not None and ns != own_ns]


def _shared_mount_ns(own_ns: str | None) -> bool:
    """Whether another process lives in our mount namespace (a mount here would outlive us)."""
    me = os.getpid()
    return own_ns is not None and any(p != me and _mount_ns(p) == own_ns for p in _all_pids())


def _open_host_view(pid: int, mount_point: Path) -> int | None:
    try:
        fd = os.open(f"/proc/{pid}/root{mount_point}", os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return None  # gone, or out of reach (another user namespace, ptrace rules)
    if is_bpffs(Path(f"/proc/self/fd/{fd}")):
        return fd
    os.close(fd)
    return None


def ensure_bpffs(pin_root: Path, mount_point: Path = Path("/sys/fs/bpf")) -> Path:
    """The path to pin under: `pin_root` itself when its bpffs is visible here, or the same
    place on the host's bpffs through a descriptor this process keeps open."""
    if not pin_root.is_relative_to(mount_point) or is_bpffs(mount_point):
        return pin_root
    own_ns = _mount_ns("self")
    for pid in candidates(own_ns, _ancestors(), _all_pids(), _mount_ns, _start_time):
        fd = _open_host_view(pid, mount_point)
        if fd is not None:
            # A mount from another namespace cannot be bound here (EINVAL); a descriptor can be
            # kept, and its /proc/self/fd path resolves for as long as we run.
            log.info("pinning on the host bpffs seen through another process's root",
                     extra={"fields": {"through_pid": pid, "fd": fd}})
            return Path(f"/proc/self/fd/{fd}") / pin_root.relative_to(mount_point)
    if _shared_mount_ns(own_ns):
        mount_point.mkdir(parents=True, exist_ok=True)
        _mount("bpf", str(mount_point), "bpf", 0)
        log.warning("mounted bpffs in this (shared) mount namespace", extra={"fields": {"at": str(mount_point)}})
        return pin_root
    raise BpffsUnavailable(
        f"{mount_point} is not a bpffs in this private mount namespace and no other process shows one: "
        f"a bpffs mounted here would die with the agent and its pinned maps with it; "
        f"mount one on the host first (mount -t bpf bpf {mount_point}) and start the agent again")
