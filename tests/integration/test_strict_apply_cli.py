"""End to end: the installed membranectl against the agent's real object store behind the
real API socket refuses a misspelled `from`, a duplicate key, malformed YAML and a 1 MB label
with one line per problem and no traceback, and stores nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.api_serving import ApiServer
from agent.object_store import ObjectStore

MEMBRANECTL = str(Path(sys.executable).parent / "membranectl")
DUPLICATED = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db
spec:
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    from:
    - podSelector: {}
"""


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[tuple[str, ObjectStore]]:
    store = ObjectStore(tmp_path / "state")
    server = ApiServer(tmp_path / "agent.sock", {"apply": lambda req: store.apply(req["objects"])})
    server.start()
    yield str(tmp_path / "agent.sock"), store
    server.stop()


def apply(sock: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MEMBRANECTL, "--socket", sock, "apply", "-f", str(path)], capture_output=True, text=True,
                          timeout=60)


def test_cli_refuses_a_misspelled_from(agent_socket: tuple[str, ObjectStore], tmp_path: Path) -> None:
    sock, store = agent_socket
    manifest = tmp_path / "p.yaml"
    manifest.write_text(DUPLICATED.replace("    from:\n    - podSelector: {}\n", "").replace("- from:", "- form:"))
    done = apply(sock, manifest)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == ["error: rejected:", "  NetworkPolicy db: spec.ingress[0].form: unknown field"]
    assert store.list("NetworkPolicy") == []  # nothing stored: no rule that admits everyone


def test_cli_duplicate_malformed_and_oversized(agent_socket: tuple[str, ObjectStore], tmp_path: Path) -> None:
    sock, store = agent_socket
    manifest = tmp_path / "p.yaml"
    manifest.write_text(DUPLICATED)
    done = apply(sock, manifest)
    assert (done.returncode, done.stderr) == (1, f'error: {manifest}:9:5: duplicate field "spec.ingress[0].from"\n')
    manifest.write_text("kind: Namespace\n  metadata: x\n")
    done = apply(sock, manifest)
    assert (done.returncode, done.stderr) == (1, f"error: {manifest}:2:11: mapping values are not allowed here\n")
    assert "Traceback" not in done.stderr
    manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": "big", "labels": {"app": "y" * (1 << 20)}}}))
    done = apply(sock, manifest)
    assert done.returncode == 1 and len(done.stderr) < 1000, done.stderr[:300]
    assert "(1048576 characters)" in done.stderr and "63 characters" in done.stderr
    assert store.list("Namespace") == []
