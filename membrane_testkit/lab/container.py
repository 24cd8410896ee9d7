"""Run a process the way a container runtime runs a hostNetwork DaemonSet container, on a lab
node: what the chart's agent container gets, emulated with namespaces, mounts and setpriv.

- network: the lab node's namespace (hostNetwork: the node's own);
- mounts (a private mount namespace, slave to the host's so new pod netns appear, as
  HostToContainer does): a tmpfs root with the machine's /usr read-only (the "image"), a copy
  of /etc, a fresh procfs whose sys/ is read-only and a sysfs mounted read-only (what an
  unprivileged container gets), /tmp, /dev, and the pod's volumes: each `(host path,
  container path, read-only)` given, bound at the container path;
- identity: uid 0, inheritable and ambient sets empty and the bounding set cut to the given
  capabilities (so permitted = effective = those), as containerd and CRI-O do for
  `capabilities: {drop: [ALL], add: [...]}`; `no_new_privs` when asked
  (allowPrivilegeEscalation: false);
- environment: exactly the given variables.

Not emulated: seccomp and AppArmor/SELinux profiles, cgroup limits, the user namespace (none
is used by the chart). Everything made lives under the node's lab dir or in the private mount
namespace, and goes away with it.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import netns


@dataclass(frozen=True)
class Volume:
    host_path: str  # on the machine; a file or a directory
    path: str  # inside the container
    read_only: bool = False


def machine_capabilities() -> set[str]:
    """Capability names (upper case, no CAP_ prefix) in this process's bounding set."""
    names = subprocess.run(["capsh", "--decode=" + _bounding_hex()], capture_output=True, text=True,
                           check=True).stdout.split("=", 1)[1].strip()
    return {n.strip().upper().removeprefix("CAP_") for n in names.split(",") if n.strip()}


def _bounding_hex() -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return line.split()[1]
    raise RuntimeError("no CapBnd in /proc/self/status")


def _script(root: Path, volumes: Sequence[Volume], capabilities: Sequence[str], env: dict[str, str],
            argv: Sequence[str], no_new_privs: bool) -> str:
    q = shlex.quote
    r = q(str(root))
    lines = [
        "set -eu",
        f"R={r}",
        'mount -t tmpfs -o mode=0755 rootfs "$R"',
        'cd "$R"',
        "mkdir -p usr etc proc sys dev tmp run var",
        "ln -s usr/bin bin; ln -s usr/sbin sbin; ln -s usr/lib lib; ln -s usr/lib64 lib64; ln -s ../run var/run",
        # The image: the machine's /usr, read-only.
        'mount --rbind /usr usr; mount -o remount,bind,ro usr',
        # The image's /etc: a copy (mount points for ConfigMaps go inside it).
        "cp -a /etc/. etc/",
        "mount -t tmpfs -o mode=1777 tmp tmp",
        "mount --rbind /dev dev",
        # procfs of our own; /proc/sys read-only as in any unprivileged container.
        "mount -t proc proc proc",
        "mount --bind proc/sys proc/sys; mount -o remount,bind,ro proc/sys",
        # sysfs of the node's network namespace, read-only.
        "mount -t sysfs -o ro sysfs sys",
    ]
    for vol in volumes:
        target = q(str(Path(vol.path).relative_to("/")))
        host = q(vol.host_path)
        lines.append(f"if [ -d {host} ]; then mkdir -p {target}; else mkdir -p $(dirname {target}); "
                     f"[ -e {target} ] || touch {target}; fi")
        lines.append(f"mount --rbind {host} {target}")
        if vol.read_only:
            lines.append(f"mount -o remount,bind,ro {target}")
    caps = ",".join(f"+{c.lower()}" for c in capabilities)
    setpriv = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", f"--bounding-set=-all{',' + caps if caps else ''}"]
    if no_new_privs:
        setpriv.append("--no-new-privs")
    env_args = [f"{k}={v}" for k, v in env.items()]
    lines.append("exec chroot . " + " ".join(q(a) for a in [*setpriv, "--", "/usr/bin/env", "-i", *env_args, *argv]))
    return "\n".join(lines)


def popen_container(node_netns: str, root: Path, volumes: Sequence[Volume], capabilities: Sequence[str],
                    env: dict[str, str], argv: Sequence[str], no_new_privs: bool = False,
                    **kwargs: object) -> subprocess.Popen[Any]:
    """Start `argv` as a container on the lab node `node_netns` (see the module docstring).
    `root` is an empty directory the container's root is mounted on."""
    root.mkdir(parents=True, exist_ok=True)
    script = _script(root, volumes, capabilities, env, argv, no_new_privs)
    cmd = ["nsenter", f"--net={netns.NETNS_DIR / node_netns}", "--",
           "unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", script]
    proc: subprocess.Popen[Any] = subprocess.Popen(cmd, **kwargs)  # type: ignore[call-overload]  # kwargs pass through
    return proc
