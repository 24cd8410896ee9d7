"""CNI plugin timings as kubelet sees them: start-up (VERSION), ADD sequential and concurrent, DEL.

The pod namespace is created before the clock starts (the container runtime does that before
kubelet calls the plugin); each timing is one plugin exec, end to end.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from membrane_testkit.lab import netns

from . import plugins
from .plugins import CniPlugin, PluginCall


@dataclass
class Timings:
    """Wall times in seconds of successful calls, plus the errors of failed ones."""

    seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record(self, call: PluginCall) -> None:
        if call.code == 0:
            self.seconds.append(call.seconds)
        else:
            self.errors.append(call.stdout.strip()[:300] or f"exit {call.code}")


def time_command(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one exec (used for start-up and `ip netns exec` overhead)."""
    start = time.perf_counter()
    subprocess.run(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True, timeout=30)
    return time.perf_counter() - start


def startup(commands: dict[str, Sequence[str]], repeats: int = 20) -> dict[str, list[float]]:
    """`CNI_COMMAND=VERSION` wall time of each plugin, interleaved A,B,A,B..."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "VERSION"}
    out: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, argv in commands.items():
            out[name].append(time_command(argv, env))
    return out


class CniTimer:
    """Adds pods through several plugins and remembers every pod it made, so `cleanup()` can DEL them."""

    def __init__(self) -> None:
        self.created: list[tuple[CniPlugin, str]] = []
        self._lock = threading.Lock()

    @staticmethod
    def _ns(plugin: CniPlugin, pod: str) -> str:
        return plugin.netns_prefix + pod

    def _prepare(self, plugin: CniPlugin, pod: str) -> str:
        path = str(netns.create(self._ns(plugin, pod)))
        with self._lock:
            self.created.append((plugin, pod))
        return path

    def _add(self, plugin: CniPlugin, pod: str, path: str) -> PluginCall:
        return plugins.call(plugin, "ADD", self._ns(plugin, pod), path, args=plugins.k8s_args(pod))

    def sequential(self, targets: Sequence[CniPlugin], count: int, tag: str = "s") -> dict[str, Timings]:
        """`count` ADDs per plugin, one at a time, interleaved across plugins."""
        out = {p.name: Timings() for p in targets}
        for i in range(count):
            for plugin in targets:
                pod = f"{tag}{i}"
                out[plugin.name].record(self._add(plugin, pod, self._prepare(plugin, pod)))
        return out

    def concurrent(self, plugin: CniPlugin, count: int, tag: str = "c") -> Timings:
        """`count` ADDs started at the same instant (a barrier), each timed on its own."""
        pods = [(f"{tag}{i}", self._prepare(plugin, f"{tag}{i}")) for i in range(count)]
        barrier = threading.Barrier(count)
        calls: list[PluginCall] = []

        def one(pod: str, path: str) -> None:
            barrier.wait()
            call = self._add(plugin, pod, path)
            with self._lock:
                calls.append(call)

        threads = [threading.Thread(target=one, args=pod) for pod in pods]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out = Timings()
        for call in calls:
            out.record(call)
        return out

    def cleanup(self, plugin_filter: str | None = None) -> dict[str, Timings]:
        """CNI DEL (timed) and remove the namespace of every pod made so far (optionally one plugin's)."""
        out: dict[str, Timings] = {}
        keep: list[tuple[CniPlugin, str]] = []
        for plugin, pod in self.created:
            if plugin_filter is not None and plugin.name != plugin_filter:
                keep.append((plugin, pod))
                continue
            ns = self._ns(plugin, pod)
            try:
                call = plugins.call(plugin, "DEL", ns, str(netns.NETNS_DIR / ns), args=plugins.k8s_args(pod))
                out.setdefault(plugin.name, Timings()).record(call)
            except Exception as exc:  # noqa: BLE001 - cleanup goes on regardless
                out.setdefault(plugin.name, Timings()).errors.append(str(exc))
            netns.delete(ns)
        self.created = keep
        return out
