"""cgroup v2 directories for the lab: where the Service socket hooks attach, and where pod and
node processes run so the hooks see them.

Always below `CGROUP2_LAB_PARENT` with a lab prefix, never the machine's root cgroup itself.
`CGROUP2_LAB_PARENT` is the machine's cgroup v2 hierarchy mounted once more outside /sys: an
agent started with `ip netns exec` gets a fresh sysfs there, which hides /sys/fs/cgroup, so its
--cgroup-root must be a path that survives (the same cgroups, another mount point). A cgroup can only be removed once no process is left in it:
`remove` moves stragglers to the parent first (they were started by the test, which ends them).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

CGROUP2_LAB_PARENT = Path("/run/membrane-lab-cgroup2")


def ensure_mount() -> Path:
    """The cgroup v2 hierarchy at CGROUP2_LAB_PARENT (mounted once; left mounted for the next run)."""
    if not (CGROUP2_LAB_PARENT / "cgroup.procs").exists():
        CGROUP2_LAB_PARENT.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "cgroup2", "none", str(CGROUP2_LAB_PARENT)], capture_output=True,
                              text=True)
        if done.returncode != 0 and not (CGROUP2_LAB_PARENT / "cgroup.procs").exists():
            raise RuntimeError(f"mounting cgroup2 at {CGROUP2_LAB_PARENT}: {done.stderr.strip()}")
    return CGROUP2_LAB_PARENT


def create(name: str, parent: Path | None = None) -> Path:
    if parent is None:
        parent = ensure_mount()
        if not name.startswith(("mbt-", "mbdemo-", "mbbench-")):
            raise ValueError(f"lab cgroups carry a lab prefix, not {name!r}")
    path = parent / name
    path.mkdir(exist_ok=True)
    return path


def child(cgroup: Path, name: str) -> Path:
    path = cgroup / name
    path.mkdir(exist_ok=True)
    return path


def wrap(cgroup: Path, cmd: list[str]) -> list[str]:
    """`cmd` run as a member of `cgroup` (the shell joins it, then execs: the pid stays)."""
    return ["sh", "-c", f'echo $$ > "{cgroup}/cgroup.procs" && exec "$@"', "sh", *cmd]


def run_in(cgroup: Path, netns: str | None, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    full = (["ip", "netns", "exec", netns] if netns else []) + cmd
    return subprocess.run(wrap(cgroup, full), capture_output=True, text=True, **kwargs)


def popen_in(cgroup: Path, netns: str | None, cmd: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
    full = (["ip", "netns", "exec", netns] if netns else []) + cmd
    proc: subprocess.Popen[Any] = subprocess.Popen(wrap(cgroup, full), **kwargs)
    return proc


def remove(cgroup: Path, timeout: float = 5.0) -> None:
    """Remove a lab cgroup and its children (their programs are detached with them)."""
    if not cgroup.exists():
        return
    for sub in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        _rmdir(sub, timeout)
    _rmdir(cgroup, timeout)


def _rmdir(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            # Processes still in it (exiting, or left behind): move them up, then retry.
            try:
                for pid in (path / "cgroup.procs").read_text().split():
                    (path.parent / "cgroup.procs").write_text(pid)
            except OSError:
                pass
            time.sleep(0.05)


def listed(prefixes: tuple[str, ...]) -> list[str]:
    if not (CGROUP2_LAB_PARENT / "cgroup.procs").exists():
        return []
    return sorted(str(p) for p in CGROUP2_LAB_PARENT.iterdir() if p.is_dir() and p.name.startswith(prefixes))


def pid_cgroup(pid: int) -> str:
    """The cgroup v2 path of a process ("0::/..." line of /proc/PID/cgroup)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


__all__ = ["CGROUP2_LAB_PARENT", "child", "create", "listed", "pid_cgroup", "popen_in", "remove", "run_in", "wrap"]

