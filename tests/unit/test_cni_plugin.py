"""The plugin without an agent: every failure is CNI error JSON with the spec's code."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from membrane import cni_types as c
from membrane.cni import plugin

CONF = {"cniVersion": "1.0.0", "name": "membrane", "type": "membrane-cni", "agentSocket": "/nonexistent/agent.sock"}
ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0"}


def run(env: dict[str, str], conf: object = CONF) -> int:
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    return plugin.run(env, data, io.StringIO())


@pytest.mark.parametrize("env,conf,code", [
    ({**ENV, "CNI_COMMAND": "BOGUS"}, CONF, c.INVALID_ENVIRONMENT),
    ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, CONF, c.INVALID_ENVIRONMENT),
    (ENV, b"{", c.DECODE_FAILURE),
    (ENV, {**CONF, "cniVersion": "2.0.0"}, c.INCOMPATIBLE_VERSION),
    (ENV, {"cniVersion": "1.0.0"}, c.INVALID_CONFIG),
    (ENV, CONF, c.TRY_AGAIN_LATER),
    ({**ENV, "CNI_COMMAND": "CHECK"}, {**CONF, "cniVersion": "0.3.1"}, c.INCOMPATIBLE_VERSION),
    ({**ENV, "CNI_ARGS": "garbage"}, CONF, c.INVALID_ENVIRONMENT),
    ({"CNI_COMMAND": "STATUS"}, {**CONF, "cniVersion": "1.1.0"}, c.PLUGIN_NOT_AVAILABLE),
])
def test_errors(env: dict[str, str], conf: object, code: int) -> None:
    with pytest.raises(c.CniError) as err:
        run(env, conf)
    assert err.value.code == code and err.value.msg


def test_version() -> None:
    out = io.StringIO()
    assert plugin.run({"CNI_COMMAND": "VERSION"}, b"", out) == 0
    body = json.loads(out.getvalue())
    assert "1.0.0" in body["supportedVersions"] and "0.4.0" in body["supportedVersions"]


def test_binary_prints_error_json_and_exits_nonzero_without_traceback() -> None:
    exe = Path(sys.executable).parent / "membrane-cni"
    done = subprocess.run([str(exe)], input=json.dumps(CONF).encode(), capture_output=True,
                          env={**os.environ, **ENV})
    assert done.returncode != 0
    body = json.loads(done.stdout)
    assert body["code"] == c.TRY_AGAIN_LATER and body["cniVersion"] == "1.0.0"
    assert b"Traceback" not in done.stderr


def test_plugin_imports_nothing_heavy_at_start() -> None:
    """kubelet execs the plugin for every pod: no dataclasses, typing, pathlib, json or socket
    before a command needs them (the installed launcher runs it with `-I -S`)."""
    import membrane

    root = os.path.dirname(os.path.dirname(os.path.realpath(membrane.__file__)))
    code = (f"import sys; sys.path.append({root!r}); import membrane.cni.plugin; "
            "print(','.join(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, check=True, env={})
    loaded = set(done.stdout.decode().strip().split(","))
    assert "membrane.cni.plugin" in loaded
    assert not loaded & {"dataclasses", "typing", "pathlib", "json", "socket", "inspect", "re"}


def test_binary_answers_version_with_an_empty_environment() -> None:
    exe = Path(sys.executable).parent / "membrane-cni"
    done = subprocess.run([str(exe)], input=b"", capture_output=True, env={"CNI_COMMAND": "VERSION"})
    assert done.returncode == 0, done.stderr
    assert "1.1.0" in json.loads(done.stdout)["supportedVersions"]
