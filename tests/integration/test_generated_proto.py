"""The checked-in gRPC code is what scripts/gen-proto.sh generates from proto/ (runs the generator)."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_generated_proto_code_in_sync(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(["bash", str(ROOT / "scripts/gen-proto.sh"), sys.executable], check=True,
                   env={"GEN_PROTO_OUT": str(tmp_path), "PATH": "/usr/bin:/bin"})
    generated = tmp_path / "membrane/api/state/v1"
    for name in ("state_pb2.py", "state_pb2_grpc.py", "state_pb2.pyi"):
        assert filecmp.cmp(generated / name, ROOT / "membrane/api/state/v1" / name, shallow=False), name

