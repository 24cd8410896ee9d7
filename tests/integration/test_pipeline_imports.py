"""The state builder runs in the agent's process (standalone mode's local source) without the
libraries only the operator's adapters need (a fresh interpreter: nothing imported before)."""

from __future__ import annotations

import subprocess
import sys


def test_the_state_builder_runs_without_grpc_or_kubernetes() -> None:
    code = ("import sys, membrane.agent.local_source; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('grpc', 'kubernetes', 'bcc', 'pyroute2', 'prometheus_client')); print(bad); sys.exit(bool(bad))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
