"""The README's launch recipe, run as written from a script that exits: pins outlive the agent.

The recipe is read from README.md (so the two cannot drift), only its names and paths are
swapped for lab ones, and it is started in the background by a shell that exits at once: the
agent is reparented and its launcher is gone before it looks for a bpffs. Then `kill -9`,
the same recipe again, and the maps (same kernel map ids), conntrack and a TCP stream must
have come through.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from membrane.agent.datapath.syscalls import bpf, map_info
from membrane.ctl.client import AgentError, request
from membrane_testkit.lab.node import LabNode
from membrane_testkit.lab.traffic import Stream
from membrane_testkit.waiting import wait_for

README = Path(__file__).resolve().parents[2] / "README.md"
HEADING = "### Start an agent as a node inside a network namespace of your choice"


def recipe() -> list[str]:
    """The commands of the README's launch recipe (continuation lines joined)."""
    text = README.read_text()
    assert HEADING in text, "the README lost its launch recipe heading"
    lines = text.split(HEADING, 1)[1].splitlines()
    block: list[str] = []
    for line in lines[1:]:
        if line.startswith("    "):
            block.append(line[4:])
        elif block:
            break
    commands, current = [], ""
    for line in block:
        current += " " + line.rstrip()
        if current.endswith("\\"):
            current = current[:-1]
            continue
        if current.strip():
            commands.append(" ".join(current.split()))
        current = ""
    return commands


def lab_recipe(node: LabNode) -> tuple[str, str]:
    """(netns add command, agent command) with the recipe's names and paths made lab ones."""
    add, start = recipe()
    swaps = [(".venv/bin/", f"{Path(sys.executable).parent}/"),
             ("/var/lib/membrane/node1", str(node.workdir / "state")),
             ("/sys/fs/bpf/membrane/node1", str(node.pin_root)),
             ("/run/membrane/node1.sock", node.socket),
             ("node1", node.netns)]
    for old, new in swaps:
        assert old in add + start, f"the README recipe no longer mentions {old}: update this test"
        add, start = add.replace(old, new), start.replace(old, new)
    assert re.fullmatch(r"ip netns add \S+", add), add
    assert start.startswith(f"ip netns exec {node.netns} "), start
    return add, start


def launch(start: str, log: Path) -> None:
    """Start the recipe in the background from a shell that exits right away."""
    script = f"{start} >>{shlex.quote(str(log))} 2>&1 </dev/null &"
    subprocess.run(["bash", "-c", script], check=True, timeout=10)


def agent_pid(sock: str, timeout: float = 90) -> int:
    """Wait until the agent is ready; its pid from the api socket's peer credentials."""
    def ready() -> bool:
        try:
            return bool(request("status", sock, timeout=5)["ready"])
        except (AgentError, OSError, ValueError):
            return False
    wait_for(ready, timeout, 0.2, f"the agent behind {sock} to be ready")
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return int(pid)


class _ObjGet(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32), ("file_flags", ctypes.c_uint32)]


def pinned_map_ids(pin_root: Path) -> dict[str, int]:
    """Kernel map id of every pin under pin_root, read from this (the host's) mount namespace."""
    ids = {}
    for pin in sorted(pin_root.iterdir()):
        path = ctypes.create_string_buffer(str(pin).encode())
        fd = bpf(7, _ObjGet(pathname=ctypes.addressof(path)))  # BPF_OBJ_GET
        try:
            ids[pin.name] = int(map_info(fd).id)
        finally:
            os.close(fd)
    return ids


def wait_gone(pid: int, timeout: float = 20) -> None:
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout, 0.05, f"agent {pid} to exit")


def test_readme_recipe_kill_9_restart_keeps_pins_and_traffic() -> None:
    node = LabNode(f"rl{os.getpid() % 100000}")
    add, start = lab_recipe(node)
    pid = None
    stream = None
    try:
        subprocess.run(shlex.split(add), check=True, timeout=10)
        node.create()
        launch(start, node.log_path)
        pid = agent_pid(node.socket)
        assert os.getppid() != pid and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1] != str(
            os.getpid()), "the agent must have lost its launcher"
        log = node.log_path.read_text()
        assert "pinning on the host bpffs" in log and "mounted" not in log, log
        a, b = node.add_pod("a"), node.add_pod("b")
        ids = pinned_map_ids(node.pin_root)  # seen from the host: the pins are on its bpffs
        assert any("endpoints" in name for name in ids) and any("ct" in name for name in ids), ids
        stream = Stream(b.netns, b.ip, a.netns, seconds=6)
        time.sleep(1.0)  # paces the test: traffic flows through the agent's programs before the kill
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        assert pinned_map_ids(node.pin_root) == ids, "pins vanished with the agent"
        a.exec(["ping", "-c", "1", "-W", "2", b.ip])  # no agent at all: the datapath still forwards
        launch(start, node.log_path)
        pid = agent_pid(node.socket)
        result = stream.result()
        assert result.bytes > 1_000_000 and result.max_gap < 0.5, result
        assert pinned_map_ids(node.pin_root) == ids, "the restarted agent made new maps instead of reopening"
        ct = [e for e in request("bpf.ct", node.socket) if e["proto"] == "tcp" and e["dst"] == f"{b.ip}:7000"]
        assert ct and ct[0]["age_s"] > 3.0, ct
        eps = request("endpoint.list", node.socket)
        assert sorted(e["ip"] for e in eps) == sorted([a.ip, b.ip]) and all(e["state"] == "ready" for e in eps)
        a.exec(["ping", "-c", "1", "-W", "2", b.ip])
    finally:
        if stream is not None:
            stream.close()
        if pid is not None and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGTERM)
            try:
                wait_gone(pid)
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
        node.destroy()


def test_recipe_is_what_the_readme_says() -> None:
    """Guards the parser above: the README shows exactly two commands, add then exec."""
    add, start = recipe()
    assert add == "ip netns add node1"
    assert start.startswith("ip netns exec node1 .venv/bin/membrane-agent ") and "--bpffs-root" in start


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
