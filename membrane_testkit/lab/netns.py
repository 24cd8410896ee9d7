"""Network namespaces and commands inside them, through the `ip` tool."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

NETNS_DIR = Path("/var/run/netns")


def run(cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done


def create(name: str) -> Path:
    if not (NETNS_DIR / name).exists():
        run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])
    return NETNS_DIR / name


def delete(name: str) -> None:
    if (NETNS_DIR / name).exists():
        run(["ip", "netns", "del", name], check=False)


def exec_in(name: str, cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run(["ip", "netns", "exec", name, *cmd], check=check, timeout=timeout)


def popen_in(name: str, cmd: list[str], **kwargs: object) -> subprocess.Popen[Any]:
    proc: subprocess.Popen[Any] = subprocess.Popen(  # type: ignore[call-overload]  # kwargs pass through
        ["ip", "netns", "exec", name, *cmd], **kwargs)
    return proc


def listed(prefix: str) -> list[str]:
    if not NETNS_DIR.exists():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir() if p.name.startswith(prefix))
