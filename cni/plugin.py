"""membrane-cni: the CNI plugin kubelet runs. A thin stdlib-only client of the agent.

It validates the environment and configuration, forwards ADD/DEL/CHECK/STATUS/GC to the
node agent over its unix socket and prints the agent's answer. Every failure is CNI error
JSON on stdout with a non-zero exit; never a traceback.

Kubelet execs it for every pod: it imports only what the command needs (VERSION: nothing
beyond `os`/`sys`; ADD/DEL: `json` and `socket`), see also the `-I -S` launcher that
scripts/install.sh writes as `.venv/bin/membrane-cni`.
"""

from __future__ import annotations

import os
import sys

from membrane.cni_types import (INCOMPATIBLE_VERSION, INTERNAL_ERROR, INVALID_ENVIRONMENT, IO_FAILURE,
                                LATEST_VERSION, PLUGIN_NOT_AVAILABLE, SUPPORTED_VERSIONS, TRY_AGAIN_LATER,
                                CniError, NetConf, parse_cni_args, version_tuple)

DEFAULT_SOCKET = "/run/membrane/agent.sock"
TIMEOUT_SECONDS = 60.0
CONNECT_ATTEMPTS = 5

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO

_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "STATUS": (),
    "GC": (),
}


def call_agent(path: str, request: dict[str, Any], timeout: float = TIMEOUT_SECONDS) -> Any:
    """One request, one response over the agent's unix socket."""
    import json
    import socket
    import time

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                sock.connect(path)
                break
            except (BlockingIOError, ConnectionRefusedError) as exc:
                # A full accept queue (EAGAIN) or an agent restarting: brief, worth a retry.
                if attempt == CONNECT_ATTEMPTS - 1:
                    raise CniError(TRY_AGAIN_LATER, "membrane agent is not reachable",
                                   f"{path}: {exc.strerror or exc}") from exc
                time.sleep(0.05 * (attempt + 1))
                sock.close()
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
            except OSError as exc:
                raise CniError(TRY_AGAIN_LATER, "membrane agent is not reachable",
                               f"{path}: {exc.strerror or exc}") from exc
        sock.sendall(json.dumps(request).encode() + b"\n")
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except socket.timeout as exc:
        raise CniError(TRY_AGAIN_LATER, "membrane agent did not answer in time", path) from exc
    except OSError as exc:
        raise CniError(IO_FAILURE, "lost the connection to the membrane agent", str(exc)) from exc
    finally:
        sock.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise CniError(IO_FAILURE, "membrane agent sent an unreadable answer") from exc
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise CniError(int(err.get("code", INTERNAL_ERROR)), str(err.get("msg", "agent error")),
                       str(err.get("details", "")))
    return reply.get("result")


def run(env: dict[str, str], stdin: bytes, out: TextIO) -> int:
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":  # JSON by hand: the one command that need not import json
        out.write('{"cniVersion": "%s", "supportedVersions": [%s]}'
                  % (LATEST_VERSION, ", ".join('"%s"' % v for v in SUPPORTED_VERSIONS)))
        return 0
    if command not in _REQUIRED_ENV:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not one of "
                       "ADD, DEL, CHECK, STATUS, GC, VERSION")
    missing = [name for name in _REQUIRED_ENV[command] if not env.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"missing environment variable(s) for {command}: {', '.join(missing)}")
    conf = NetConf.parse(stdin)
    if command == "CHECK" and version_tuple(conf.cni_version) < (0, 4, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK is not defined for cniVersion {conf.cni_version}")
    if command in ("STATUS", "GC") and version_tuple(conf.cni_version) < (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0 or later")
    socket_path = env.get("MEMBRANE_AGENT_SOCKET") or conf.agent_socket or DEFAULT_SOCKET
    request = {
        "op": "cni", "command": command,
        "containerID": env.get("CNI_CONTAINERID", ""), "netns": env.get("CNI_NETNS", ""),
        "ifName": env.get("CNI_IFNAME", ""), "args": parse_cni_args(env.get("CNI_ARGS", "")),
        "path": env.get("CNI_PATH", ""), "config": conf.raw,
    }
    try:
        result = call_agent(socket_path, request)
    except CniError as exc:
        if command == "STATUS" and exc.code in (TRY_AGAIN_LATER, IO_FAILURE):
            raise CniError(PLUGIN_NOT_AVAILABLE, "membrane agent is not available", exc.details) from exc
        raise
    if command == "ADD" and result is not None:
        import json

        json.dump(result, out)
    return 0


def _conf_version(stdin: bytes) -> str:
    """The configuration's cniVersion for an error body (parsed only when there is an error)."""
    import json

    try:
        return str(json.loads(stdin).get("cniVersion") or LATEST_VERSION)
    except Exception:  # noqa: BLE001 - NetConf.parse reported what is wrong with it
        return LATEST_VERSION


def main() -> None:
    stdin = b""
    try:
        stdin = sys.stdin.buffer.read() if sys.stdin is not None else b""
        code = run(dict(os.environ), stdin, sys.stdout)
    except CniError as exc:
        import json

        json.dump(exc.to_json(_conf_version(stdin)), sys.stdout)
        code = 1
    except Exception as exc:  # noqa: BLE001 - the spec wants JSON, never a traceback
        import json

        json.dump(CniError(INTERNAL_ERROR, "membrane-cni internal error", repr(exc)).to_json(_conf_version(stdin)),
                  sys.stdout)
        code = 1
    sys.stdout.write("\n")
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
