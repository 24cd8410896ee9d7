"""A client of the agent's unix socket API (stdlib only, shared by membranectl and tests)."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

DEFAULT_SOCKET = "/run/membrane/agent.sock"


class AgentError(Exception):
    def __init__(self, code: int, msg: str, details: Any = None) -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def socket_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get("MEMBRANE_AGENT_SOCKET") or DEFAULT_SOCKET


def request(op: str, path: str | None = None, timeout: float = 60.0, **args: Any) -> Any:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    target = socket_path(path)
    try:
        try:
            sock.connect(target)
        except OSError as exc:
            raise AgentError(11, f"cannot reach the membrane agent at {target}: {exc.strerror or exc}") from exc
        sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
    finally:
        sock.close()
    reply = json.loads(data)
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise AgentError(int(err.get("code", 1)), str(err.get("msg")), err.get("details"))
    return reply.get("result")
