"""membranectl as scripts and people use it: -o json|yaml anywhere, --version, bash completion,
distinct exit codes (0 ok, 1 error, 2 usage, 3 denied) and no traceback when its reader goes
away (`| head`). Runs the installed `membranectl` against a stand-in agent socket."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from membrane.agent.observing import (
    EndpointInfo,
    EventType,
    FlowObserver,
    ObserverServer,
    StaticDirectory,
    encode_event,
)
from membrane.build_info import build_info
from membrane.ctl.main import hoist_output, run

MEMBRANECTL = str(Path(sys.executable).parent / "membranectl")
ENDPOINTS = [{"pod": f"shop/web-{i}", "ip": f"10.200.{i // 250}.{i % 250 + 2}", "host_ifname": f"mb{i}",
              "endpoint_id": i, "identity": 256, "state": "ready"} for i in range(1500)]  # more than a pipe holds


def answer(op: str, args: dict[str, Any]) -> dict[str, Any]:
    if op == "status":
        return {"ok": True, "result": {"node": "n1", "ready": True, "endpoints": 2}}
    if op == "endpoint.list":
        return {"ok": True, "result": ENDPOINTS}
    if op == "prefilter.list":
        return {"ok": True, "result": [
            {"order": 1, "name": "bad", "kind": "deny-list", "action": "drop", "origin": "bad",
             "matches": "source in 2 prefix(es)"},
            {"order": 2, "name": "cve.x", "kind": "rule", "action": "drop", "origin": "cve",
             "matches": "udp dport 4242"}]}
    if op == "prefilter.stats":
        return {"ok": True, "result": [{"name": "cve.x", "kind": "rule", "action": "drop", "packets": 7,
                                        "bytes": 420, "dropped_packets": 7, "dropped_bytes": 420}]}
    if op == "policy.trace":
        verdict = "allow" if args.get("src") == "shop/web" else "deny"
        return {"ok": True, "result": {"verdict": verdict, "lines": [f"verdict: {verdict}"]}}
    return {"ok": False, "error": {"code": 7, "msg": f"no such thing: {op}"}}


@pytest.fixture()
def agent(tmp_path: Path) -> Iterator[str]:
    """A unix socket speaking the agent API's protocol (one JSON request line, one answer)."""
    path = str(tmp_path / "agent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                request = json.loads(data)
                try:
                    conn.sendall(json.dumps(answer(request.pop("op"), request)).encode())
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join(5)
    server.close()


def ctl(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEMBRANECTL, *args], capture_output=True, text=True, timeout=60, **kw)


def test_output_option_moves_to_the_front() -> None:
    assert hoist_output(["status", "-o", "yaml"]) == ["-o", "yaml", "status"]
    assert hoist_output(["policy", "trace", "--from", "a", "-ojson", "--to", "b"]) == \
        ["-o", "json", "policy", "trace", "--from", "a", "--to", "b"]
    assert hoist_output(["--output=yaml", "endpoint", "list", "--output", "json"]) == \
        ["-o", "json", "endpoint", "list"]
    assert hoist_output(["apply", "-f", "-", "--", "-o", "x"]) == ["apply", "-f", "-", "--", "-o", "x"]
    assert hoist_output(["status"]) == ["status"]


def test_output_anywhere_json_and_yaml(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["-o", "yaml", "status"], ["status", "-o", "yaml"], ["status", "--output=yaml"]):
        assert run(["--socket", agent, *args]) == 0
        assert yaml.safe_load(capsys.readouterr().out) == {"node": "n1", "ready": True, "endpoints": 2}
    assert run(["--socket", agent, "endpoint", "list", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["pod"] == "shop/web-0"
    assert run(["--socket", agent, "endpoint", "-oyaml", "list"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)[1]["pod"] == "shop/web-1"
    assert run(["--socket", agent, "endpoint", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split() == ["POD", "IP", "INTERFACE", "ID", "IDENTITY", "STATE"]


def test_exit_codes(agent: str, tmp_path: Path) -> None:
    allow = ctl("--socket", agent, "policy", "trace", "--from", "shop/web", "--to", "shop/db")
    assert allow.returncode == 0 and "verdict: allow" in allow.stdout
    deny = ctl("--socket", agent, "policy", "trace", "--from", "shop/other", "--to", "shop/db")
    assert deny.returncode == 3 and "verdict: deny" in deny.stdout
    deny_json = ctl("--socket", agent, "policy", "trace", "--from", "x/y", "--to", "shop/db", "-o", "json")
    assert deny_json.returncode == 3 and json.loads(deny_json.stdout)["verdict"] == "deny"
    refused = ctl("--socket", agent, "identity", "list")
    assert refused.returncode == 1 and refused.stderr.strip() == "error: no such thing: identity.list"
    absent = ctl("--socket", str(tmp_path / "none.sock"), "status")
    assert absent.returncode == 1 and absent.stderr.startswith("error: cannot reach the membrane agent")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("a: [unclosed\n")
    broken = ctl("--socket", agent, "apply", "-f", str(bad_yaml))
    assert broken.returncode == 1 and len(broken.stderr.splitlines()) == 1 and "Traceback" not in broken.stderr
    done = ctl("bogus")
    assert done.returncode == 2 and "usage: membranectl" in done.stderr and "Traceback" not in done.stderr


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for usage in (["bogus"], ["status", "-o", "xml"], ["policy", "get"], ["bpf", "nope"], ["--nope", "status"],
                  [], ["completion", "fish"]):
        with pytest.raises(SystemExit) as exited:
            run(usage)
        assert exited.value.code == 2, usage
        assert "usage: membranectl" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        run(["--help"])
    assert exited.value.code == 0 and "3 denied" in capsys.readouterr().out


def test_version() -> None:
    done = ctl("--version")
    info = build_info()
    assert done.returncode == 0
    # the commit is whatever HEAD is when the tool runs (a commit during the test run may move it)
    assert re.fullmatch(rf"membranectl {re.escape(info.version)} \(commit ([0-9a-f]{{7,40}}|unknown), "
                        rf"Python {re.escape(info.python_version)}\)", done.stdout.strip()), done.stdout


def complete(script: str, *words: str) -> list[str]:
    program = (f"source {script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n_membranectl\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    done = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.split()


def test_bash_completion(tmp_path: Path) -> None:
    done = ctl("completion", "bash")
    assert done.returncode == 0
    script = tmp_path / "membranectl.bash"
    script.write_text(done.stdout)
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    s = str(script)
    assert complete(s, "membranectl", "pol") == ["policy"]
    assert complete(s, "membranectl", "policy", "") == ["list", "get", "trace", "--help", "--output", "-h", "-o"]
    assert complete(s, "membranectl", "--socket", "/run/x.sock", "policy", "tr") == ["trace"]
    assert sorted(complete(s, "membranectl", "status", "-o", "")) == ["compact", "json", "table", "yaml"]
    assert complete(s, "membranectl", "bpf", "c") == ["ct"]
    assert complete(s, "membranectl", "observe", "-f", "--verd") == ["--verdict"]  # -f: follow, no value
    assert complete(s, "membranectl", "apply", "-f", str(tmp_path / "membranectl.b")) == [s]  # -f: a file
    assert complete(s, "membranectl", "completion", "b") == ["bash"]


def test_no_traceback_when_the_reader_goes_away(agent: str) -> None:
    """`membranectl ... | head -1`, with more output than a pipe holds."""
    for command in (f"{MEMBRANECTL} --socket {agent} endpoint list -o json",
                    f"{MEMBRANECTL} --socket {agent} endpoint list"):
        done = subprocess.run(["bash", "-o", "pipefail", "-c", f"{command} | head -1"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stderr == "" and len(done.stdout.splitlines()) == 1


def test_observe_into_head(tmp_path: Path) -> None:
    observer = FlowObserver("node1", StaticDirectory(endpoints={
        "10.200.1.5": EndpointInfo("shop", "web-1", {"app": "web"}, 256)}), capacity=8192)
    for i in range(8000):
        observer.on_event(encode_event(ts_ns=time.monotonic_ns(), saddr="10.200.1.5", daddr="10.200.1.7",
                                       sport=40000 + i % 1000, dport=80, nexthdr=6, type=EventType.TRACE_NEW,
                                       direction=1, tcp_flags=2, src_identity=256, dst_identity=257, rule_ref=0,
                                       len=74))
    server = ObserverServer(observer, tmp_path / "n.observer.sock")
    server.start()
    try:
        for output in ("compact", "json", "yaml"):
            command = f"{MEMBRANECTL} observe --server unix://{server.unix_path} --last 0 -o {output} | head -3"
            done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0 and done.stderr == "", (output, done.stderr)
            assert len(done.stdout.splitlines()) == 3
            if output == "yaml":
                assert done.stdout.startswith("---\n")
    finally:
        server.stop(0.1)


def test_prefilter_list_and_stats(agent: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--socket", agent, "prefilter", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["#", "NAME", "KIND", "ACTION", "FROM", "MATCHES"]
    assert lines[2].split() == ["2", "cve.x", "rule", "drop", "cve", "udp", "dport", "4242"]
    assert run(["--socket", agent, "prefilter", "stats", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["dropped_packets"] == 7
    assert run(["--socket", agent, "prefilter", "stats"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split() == ["cve.x", "rule", "drop", "7", "420", "7", "420"]
