"""Readers of policy state (flow enrichment, membranectl, trace) go through the read-only query
interface: they never take the policy manager's lock or read its internals."""

from __future__ import annotations

import ast
from pathlib import Path

from membrane.agent.policy_queries import PolicyQueries
from membrane.agent.policy_syncing import PolicyManager

AGENT = Path(__file__).resolve().parents[2] / "agent"
READERS = ("flow_directory.py", "policy_api.py")
INTERNALS = {"lock", "resolver", "rules", "identities", "pods", "local", "maps", "written_policy",
             "written_ipcache", "namespaces"}


def test_readers_touch_only_the_query_interface() -> None:
    allowed = {name for name in dir(PolicyQueries) if not name.startswith("_")} | {"generation"}
    for name in READERS:
        tree = ast.parse((AGENT / name).read_text())
        used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and isinstance(node.value, (ast.Name, ast.Attribute))
                and (getattr(node.value, "id", None) in ("manager", "queries")
                     or getattr(node.value, "attr", None) in ("manager", "queries"))}
        assert used, name
        assert not used & INTERNALS, f"{name} reads {sorted(used & INTERNALS)}"
        assert used <= allowed, f"{name} uses {sorted(used - allowed)} outside the query interface"
        assert "policy_syncing" not in (AGENT / name).read_text(), name


def test_the_policy_manager_implements_every_query() -> None:
    for name in (n for n in dir(PolicyQueries) if not n.startswith("_")):
        assert callable(getattr(PolicyManager, name)), name


def test_no_module_takes_the_policy_managers_lock() -> None:
    """Writers run on the one driver thread (agent/state_driving.py) and call the manager, which
    takes its own lock; readers use the query interface."""
    for path in sorted(AGENT.rglob("*.py")):
        if path.name == "policy_syncing.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "lock" and isinstance(node.value, ast.Attribute):
                assert node.value.attr not in ("policy", "manager", "queries"), \
                    f"{path.relative_to(AGENT)}:{node.lineno} takes the policy manager's lock"
