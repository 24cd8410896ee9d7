"""Test support for membrane: the namespace lab, stand-ins for the outside world that speak its
real protocols, and fakes. Not shipped (pyproject.toml lists only the product's packages).

Nothing here is imported by the agent, the operator or the CNI plugin (tests/quality/test_layers.py).
`membrane_testkit.kubeapi` is an in-memory Kubernetes API server that the official `kubernetes`
client talks to unmodified; `membrane_testkit.lab` builds nodes and pods from network namespaces
for the tests, `make demo` and `make bench`.

The package is found from the repository root (pytest's `pythonpath`, or the cwd of `python -m`):
a child Python started elsewhere that imports it gets `child_env()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the repository root first on PYTHONPATH,
    so a child Python with another cwd (a pytest run in a temporary directory, a command run
    inside a namespace) imports membrane_testkit as this process does."""
    env = dict(os.environ if base is None else base)
    rest = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + rest if rest else "")
    return env
