"""A lab node: a network namespace running a real membrane-agent, plus its pods.

Pods are added and removed through the real `membrane-cni` plugin, called the way kubelet
calls it (CNI_* environment, network configuration on stdin).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from membrane.ctl.client import AgentError, request
from membrane_testkit.waiting import WaitTimeout, wait_for

from . import netns

BPFFS_LAB = Path("/sys/fs/bpf/membrane-lab")
LAB_DIR = Path("/run/membrane-lab")


def tool(name: str) -> str:
    """A console script of this installation (next to the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Pod:
    name: str
    namespace: str
    netns: str
    container_id: str
    result: dict[str, Any]

    @property
    def ip(self) -> str:
        return str(self.result["ips"][0]["address"]).split("/")[0]

    def exec(self, cmd: list[str], check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return netns.exec_in(self.netns, cmd, check=check, timeout=timeout)


@dataclass
class LabNode:
    name: str
    pod_cidr: str = "10.200.1.0/24"
    prefix: str = "mbt"
    extra_args: list[str] = field(default_factory=list)
    # Command the agent runs under, inside the node netns (e.g. `unshare -m ...` to hide host paths).
    wrapper: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    pods: dict[str, Pod] = field(default_factory=dict)

    @property
    def netns(self) -> str:
        return f"{self.prefix}-{self.name}"

    @property
    def workdir(self) -> Path:
        return LAB_DIR / self.netns

    @property
    def socket(self) -> str:
        return str(self.workdir / "agent.sock")

    @property
    def pin_root(self) -> Path:
        return BPFFS_LAB / self.netns

    @property
    def log_path(self) -> Path:
        return self.workdir / "agent.log"

    def create(self) -> LabNode:
        netns.create(self.netns)
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    # 180 s: a loaded 2-core machine compiling BPF took over 60 s to start an agent (a wait on a
    # condition: it only decides how late a real failure is reported).
    def start_agent(self, timeout: float = 180, wait_ready: bool = True) -> None:
        cmd = [tool("membrane-agent"), "--node-name", self.name, "--pod-cidr", self.pod_cidr,
               "--state-dir", str(self.workdir / "state"), "--bpffs-root", str(self.pin_root),
               "--api-socket", self.socket, "--http-addr", "127.0.0.1:9962", *self.extra_args]
        log = open(self.log_path, "ab")
        self.process = netns.popen_in(self.netns, [*self.wrapper, *cmd], stdout=log, stderr=log,
                                      stdin=subprocess.DEVNULL)
        log.close()
        if not wait_ready:  # e.g. Kubernetes mode before the operator is up
            return
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 180) -> None:
        process = self.process
        assert process is not None

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"agent on {self.name} exited {process.returncode}: {self.log_tail()}")
            try:
                return bool(request("status", self.socket, timeout=5)["ready"])
            except (AgentError, OSError, ValueError):
                return False
        try:
            wait_for(ready, timeout, 0.1, f"agent on {self.name} ready")
        except WaitTimeout:
            raise RuntimeError(f"agent on {self.name} not ready after {timeout}s: {self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def stop_agent(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        code = self.process.returncode
        self.process = None
        return code

    def api(self, op: str, **args: Any) -> Any:
        try:
            return request(op, self.socket, **args)
        except AgentError as exc:
            if exc.code != 11:  # the agent answered: its error is the whole story
                raise
            # Unreachable: say whether the agent died or its socket went (a run that wiped the
            # lab's work dirs), with the agent's own last words.
            raise AgentError(exc.code, f"{exc.msg} [{self.agent_state()}]", exc.details) from exc

    def agent_state(self) -> str:
        """One line for a failure message: process alive or exit code, socket present, log tail."""
        if self.process is None:
            running = "no agent started"
        elif self.process.poll() is None:
            running = f"agent pid {self.process.pid} still running"
        else:
            running = f"agent exited {self.process.returncode}"
        where = "socket present" if os.path.exists(self.socket) else (
            "socket gone" if self.workdir.exists() else f"work dir {self.workdir} gone")
        return f"{running}; {where}; agent log tail:\n{self.log_tail()}"

    def cni(self, command: str, container_id: str = "", pod_netns: str = "", ifname: str = "eth0",
            args: str = "", conf: dict[str, Any] | None = None, env: dict[str, str] | None = None,
            stdin: bytes | None = None) -> tuple[int, dict[str, Any] | None, str]:
        """Run the plugin as kubelet does: returns (exit code, parsed stdout or None, raw stdout)."""
        config = conf if conf is not None else self.net_conf()
        environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
                   "CNI_CONTAINERID": container_id, "CNI_NETNS": pod_netns, "CNI_IFNAME": ifname,
                   "CNI_ARGS": args, "CNI_PATH": "/opt/cni/bin", **(env or {})}
        data = stdin if stdin is not None else json.dumps(config).encode()
        done = subprocess.run([tool("membrane-cni")], input=data, env=environ, capture_output=True, timeout=90)
        out = done.stdout.decode()
        try:
            parsed = json.loads(out) if out.strip() else None
        except ValueError:
            parsed = None
        return done.returncode, parsed, out

    def net_conf(self, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
        return {"cniVersion": version, "name": "membrane", "type": "membrane-cni",
                "agentSocket": self.socket, **extra}

    def add_pod(self, name: str, namespace: str = "default", ifname: str = "eth0") -> Pod:
        pod_ns = f"{self.netns}-{name}"
        path = netns.create(pod_ns)
        container_id = f"{self.name}-{namespace}-{name}".replace("/", "-")
        args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"
        code, result, raw = self.cni("ADD", container_id, str(path), ifname, args)
        if code != 0 or result is None:
            netns.delete(pod_ns)
            raise RuntimeError(f"CNI ADD {name} failed ({code}): {raw}")
        pod = Pod(name, namespace, pod_ns, container_id, result)
        self.pods[name] = pod
        return pod

    def delete_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        code, _, raw = self.cni("DEL", pod.container_id, str(netns.NETNS_DIR / pod.netns), "eth0")
        netns.delete(pod.netns)
        if code != 0:
            raise RuntimeError(f"CNI DEL {name} failed: {raw}")

    def destroy(self) -> None:
        """Remove everything this node created, whatever state it is in."""
        for name in list(self.pods):
            try:
                if self.process is not None and self.process.poll() is None:
                    self.delete_pod(name)
            except Exception:  # noqa: BLE001 - cleanup goes on regardless
                pass
            pod = self.pods.pop(name, None)
            if pod is not None:
                netns.delete(pod.netns)
        self.stop_agent()
        for leftover in netns.listed(f"{self.netns}-"):
            netns.delete(leftover)
        netns.delete(self.netns)
        shutil.rmtree(self.pin_root, ignore_errors=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
