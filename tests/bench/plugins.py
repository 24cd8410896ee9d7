"""Run a CNI plugin exactly as kubelet does (CNI_* environment, config on stdin) and time it."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CniPlugin:
    """Everything needed to call one CNI plugin for pods of one node.

    `argv` is the command kubelet would exec (for the bridge reference it is wrapped in
    `ip netns exec <node>` so the plugin acts on the node namespace, never on the machine).
    `netns_prefix` is the prefix of the pod namespaces created for this plugin.
    """

    name: str
    argv: tuple[str, ...]
    conf: dict[str, Any]
    cni_path: str
    netns_prefix: str


@dataclass(frozen=True)
class PluginCall:
    """One plugin invocation: wall time as kubelet sees it, exit code and stdout."""

    seconds: float
    code: int
    stdout: str

    @property
    def result(self) -> dict[str, Any] | None:
        try:
            parsed = json.loads(self.stdout) if self.stdout.strip() else None
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None


def call(plugin: CniPlugin, command: str, container_id: str = "", netns_path: str = "",
         ifname: str = "eth0", args: str = "", timeout: float = 90) -> PluginCall:
    """Exec the plugin once and time it end to end (fork, exec, work, exit)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
           "CNI_CONTAINERID": container_id, "CNI_NETNS": netns_path, "CNI_IFNAME": ifname,
           "CNI_ARGS": args, "CNI_PATH": plugin.cni_path}
    stdin = json.dumps(plugin.conf).encode()
    start = time.perf_counter()
    done = subprocess.run(list(plugin.argv), input=stdin, env=env, capture_output=True, timeout=timeout)
    seconds = time.perf_counter() - start
    return PluginCall(seconds, done.returncode, done.stdout.decode(errors="replace"))


def k8s_args(pod: str, namespace: str = "default") -> str:
    """The CNI_ARGS kubelet passes."""
    return f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}"
