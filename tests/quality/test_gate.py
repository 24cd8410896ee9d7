"""The quality gate `make test` runs: ruff and mypy at zero findings, `type: ignore`s that say
why, and the `py.typed` marker the package declares.

Rules and strictness live in pyproject.toml ([tool.ruff], [tool.mypy]); the tools are the
venv's own (the test extra installs them), so CI and a developer run the same versions. A
finding fails the test with the tool's own report in the message.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The installed package maps folders onto one import package (pyproject [tool.setuptools]
# package-dir): membrane/ is `membrane`, agent/ is `membrane.agent`, operator/ `membrane.operator`.
PACKAGE_DIRS = {"membrane": "membrane", "agent": "membrane/agent", "operator": "membrane/operator"}
# The test kit (lab, API stand-in, fakes) is not shipped but is held to the same gate.
TESTKIT_DIRS = {"membrane_testkit": "membrane_testkit"}
GENERATED = re.compile(r"_pb2(_grpc)?\.pyi?$")


def _tool(name: str) -> str:
    exe = BIN / name
    assert exe.exists(), f"{exe} missing: `make install` installs the test extra (ruff, mypy)"
    return str(exe)


def test_ruff_finds_nothing() -> None:
    run = subprocess.run([_tool("ruff"), "check", "--no-cache", "--output-format", "concise", "."],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"ruff findings (fix them; see [tool.ruff] in pyproject.toml):\n{run.stdout}{run.stderr}"


def _package_tree(dest: Path) -> Path:
    """The import package as installed (membrane/ with agent/ and operator/ inside), for mypy,
    which cannot follow setuptools' editable-install finder."""
    for folder, target in (PACKAGE_DIRS | TESTKIT_DIRS).items():
        shutil.copytree(ROOT / folder, dest / target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_mypy_finds_nothing(tmp_path: Path) -> None:
    tree = _package_tree(tmp_path / "tree")
    run = subprocess.run([_tool("mypy"), "--config-file", "pyproject.toml", "--cache-dir", str(ROOT / ".mypy_cache"),
                          "--no-error-summary", "--hide-error-context", "-p", "membrane", "-p", "membrane_testkit"],
                         cwd=tree, capture_output=True, text=True, timeout=600)
    report = run.stdout.replace("membrane/agent/", "agent/").replace("membrane/operator/", "operator/")
    assert run.returncode == 0, f"mypy findings (strictness: [tool.mypy] in pyproject.toml):\n{report}{run.stderr}"


def _checked_files() -> list[Path]:
    return sorted(p for folder in PACKAGE_DIRS | TESTKIT_DIRS for p in (ROOT / folder).rglob("*.py")
                  if not GENERATED.search(p.name))


def test_type_ignores_name_their_code_and_reason() -> None:
    """`# type: ignore[code]  # why` (or `- why`): a bare ignore hides every error on its line,
    and one without a reason cannot be reviewed."""
    ignore = re.compile(r"#\s*type:\s*ignore")
    explained = re.compile(r"#\s*type:\s*ignore\[[a-z0-9_-]+(,\s*[a-z0-9_-]+)*\]\s*(#|-)\s*\S")
    bad = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in _checked_files()
           for n, line in enumerate(p.read_text().splitlines(), 1)
           if ignore.search(line) and not explained.search(line)]
    assert not bad, "type: ignore without [code] and a reason:\n" + "\n".join(bad)


def test_py_typed_marker_exists_and_is_packaged() -> None:
    assert (ROOT / "membrane" / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text()
