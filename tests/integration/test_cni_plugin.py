"""The Go plugin binary (cni/membrane-cni) as kubelet runs it: spec error codes without an agent,
and, against a stand-in agent socket, a request carrying what kubelet gave and the agent's
answer relayed as is (result, error, and a connection that dies before the answer)."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from membrane import cni_types as c

EXE = Path(sys.executable).parent / "membrane-cni"
CONF = {"cniVersion": "1.0.0", "name": "membrane", "type": "membrane-cni", "agentSocket": "/nonexistent/agent.sock"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0"}


def plugin(env: dict[str, str], conf: object = CONF) -> tuple[int, Any, subprocess.CompletedProcess[bytes]]:
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    done = subprocess.run([str(EXE)], input=data, env=env, capture_output=True, timeout=30)
    body = json.loads(done.stdout) if done.stdout.strip() else None
    return done.returncode, body, done


@pytest.mark.parametrize("env,conf,code", [
    ({**ENV, "CNI_COMMAND": "BOGUS"}, CONF, c.INVALID_ENVIRONMENT),
    ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, CONF, c.INVALID_ENVIRONMENT),
    (ENV, b"{", c.DECODE_FAILURE),
    (ENV, b"[1, 2]", c.DECODE_FAILURE),
    (ENV, b'{"cniVersion": "1.0.0"} trailing', c.DECODE_FAILURE),
    (ENV, {**CONF, "cniVersion": "2.0.0"}, c.INCOMPATIBLE_VERSION),
    (ENV, {"cniVersion": "1.0.0"}, c.INVALID_CONFIG),
    (ENV, {**CONF, "mtu": 1500.5}, c.INVALID_CONFIG),
    (ENV, {**CONF, "mtu": 100}, c.INVALID_CONFIG),
    (ENV, {**CONF, "agentSocket": 7}, c.INVALID_CONFIG),
    (ENV, {**CONF, "prevResult": []}, c.INVALID_CONFIG),
    (ENV, CONF, c.TRY_AGAIN_LATER),
    ({**ENV, "CNI_COMMAND": "CHECK"}, {**CONF, "cniVersion": "0.3.1"}, c.INCOMPATIBLE_VERSION),
    ({"CNI_COMMAND": "GC"}, CONF, c.INCOMPATIBLE_VERSION),
    ({**ENV, "CNI_ARGS": "garbage"}, CONF, c.INVALID_ENVIRONMENT),
    ({"CNI_COMMAND": "STATUS"}, {**CONF, "cniVersion": "1.1.0"}, c.PLUGIN_NOT_AVAILABLE),
])
def test_errors(env: dict[str, str], conf: object, code: int) -> None:
    rc, body, done = plugin(env, conf)
    assert rc == 1, done
    assert body["code"] == code and body["msg"], body
    assert b"panic" not in done.stderr and done.stderr == b""


def test_error_carries_the_configurations_version() -> None:
    _, body, _ = plugin(ENV, {**CONF, "cniVersion": "0.4.0"})
    assert body["cniVersion"] == "0.4.0" and body["code"] == c.TRY_AGAIN_LATER
    assert body["details"] == "/nonexistent/agent.sock: no such file or directory"
    _, body, _ = plugin(ENV, b"nope")
    assert body["cniVersion"] == c.LATEST_VERSION and body["code"] == c.DECODE_FAILURE


def test_version_with_an_empty_environment() -> None:
    rc, body, _ = plugin({"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0
    assert body == {"cniVersion": c.LATEST_VERSION, "supportedVersions": list(c.SUPPORTED_VERSIONS)}


def test_binary_is_static_with_no_interpreter() -> None:
    """Nodes without python3 or libc run it: an ELF executable without PT_INTERP (dynamic loader)."""
    data = EXE.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    assert 3 not in types and 2 not in types  # PT_INTERP, PT_DYNAMIC


class FakeAgent:
    """A unix socket answering each connection with `answer(request_line)` (raw bytes, or None
    to close without answering)."""

    def __init__(self, path: Path, answer: Callable[[bytes], bytes | None]) -> None:
        self.path, self.answer, self.requests = path, answer, []  # type: ignore[var-annotated]
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                line = conn.makefile("rb").readline()
                self.requests.append(json.loads(line))
                reply = self.answer(line)
                if reply is not None:
                    conn.sendall(reply)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Callable[[Callable[[bytes], bytes | None]], FakeAgent]]:
    made: list[FakeAgent] = []

    def make(answer: Callable[[bytes], bytes | None]) -> FakeAgent:
        made.append(FakeAgent(tmp_path / f"agent{len(made)}.sock", answer))
        return made[-1]

    yield make
    for fake in made:
        fake.close()


def test_add_forwards_the_request_and_relays_the_result_verbatim(agent: Any) -> None:
    result = b'{"cniVersion":"1.0.0",  "ips":[{"address":"10.0.0.5/32"}],"zz":1,"aa":{"x":[]}}'
    fake = agent(lambda _: b'{"ok": true, "result": ' + result + b'}\n')
    conf = {**CONF, "agentSocket": str(fake.path), "prevResult": {"ips": []}, "runtimeConfig": {"x": 1}}
    env = {**ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default", "CNI_PATH": "/opt/cni/bin"}
    rc, _, done = plugin(env, conf)
    assert rc == 0, done
    assert done.stdout == result + b"\n"
    (req,) = fake.requests
    assert req == {"op": "cni", "command": "ADD", "containerID": "abc", "netns": "/var/run/netns/x",
                   "ifName": "eth0", "path": "/opt/cni/bin", "config": conf,
                   "args": {"IgnoreUnknown": "1", "K8S_POD_NAME": "web", "K8S_POD_NAMESPACE": "default"}}


def test_environment_socket_wins_over_the_configuration(agent: Any) -> None:
    fake = agent(lambda _: b'{"ok": true, "result": null}\n')
    rc, body, _ = plugin({**ENV, "CNI_COMMAND": "DEL", "MEMBRANE_AGENT_SOCKET": str(fake.path)}, CONF)
    assert rc == 0 and body is None and fake.requests[0]["command"] == "DEL"


@pytest.mark.parametrize("command", ["DEL", "CHECK", "STATUS", "GC"])
def test_other_commands_print_nothing_on_success(agent: Any, command: str) -> None:
    fake = agent(lambda _: b'{"ok": true, "result": {"removed": []}}\n')
    conf = {**CONF, "cniVersion": "1.1.0", "agentSocket": str(fake.path)}
    rc, body, done = plugin({**ENV, "CNI_COMMAND": command}, conf)
    assert rc == 0 and body is None and done.stdout == b"\n"


def test_agent_error_is_relayed_with_its_code(agent: Any) -> None:
    fake = agent(lambda _: json.dumps({"ok": False, "error": {"code": 4, "msg": "CNI_NETNS is a regular file",
                                                                 "details": "/tmp/x"}}).encode() + b"\n")
    rc, body, _ = plugin(ENV, {**CONF, "cniVersion": "0.4.0", "agentSocket": str(fake.path)})
    assert rc == 1
    assert body == {"cniVersion": "0.4.0", "code": 4, "msg": "CNI_NETNS is a regular file", "details": "/tmp/x"}


def test_agent_dying_mid_request_is_an_io_failure(agent: Any) -> None:
    fake = agent(lambda _: None)  # reads the request, closes without a word
    rc, body, _ = plugin(ENV, {**CONF, "agentSocket": str(fake.path)})
    assert rc == 1 and body["code"] == c.IO_FAILURE
    fake = agent(lambda _: b'{"ok": tr')  # half an answer
    rc, body, _ = plugin(ENV, {**CONF, "agentSocket": str(fake.path)})
    assert rc == 1 and body["code"] == c.IO_FAILURE


def test_stale_socket_is_try_again_later(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: connection refused
    rc, body, _ = plugin(ENV, {**CONF, "agentSocket": str(path)})
    assert rc == 1 and body["code"] == c.TRY_AGAIN_LATER and "refused" in body["details"]
    rc, body, _ = plugin({"CNI_COMMAND": "STATUS"}, {**CONF, "cniVersion": "1.1.0", "agentSocket": str(path)})
    assert rc == 1 and body["code"] == c.PLUGIN_NOT_AVAILABLE


def test_go_sources_are_gofmt_clean() -> None:
    src = Path(__file__).resolve().parents[2] / "cni" / "membrane-cni"
    done = subprocess.run(["gofmt", "-l", str(src)], capture_output=True, text=True, check=True)
    assert done.stdout == "", f"not gofmt-formatted: {done.stdout}"
