"""The session-end leftover check (tests/conftest.py) fails a run that leaves lab objects behind,
and only for objects of that run (not another run's, which may be alive on a shared machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from membrane_testkit import child_env
from membrane_testkit.lab.node import LAB_DIR

ROOT = Path(__file__).resolve().parents[2]

LEAVES = '''
import os
from membrane_testkit.lab.node import LAB_DIR

def test_leaves_a_work_dir():
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    (LAB_DIR / f"mbt-left{os.getpid() % 10000}").mkdir()
'''


def run(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(ROOT / "tests/conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text(body)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(tmp_path)],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=120)


def test_a_run_that_leaves_a_work_dir_fails_naming_it(tmp_path: Path) -> None:
    before = set(LAB_DIR.iterdir()) if LAB_DIR.exists() else set()
    try:
        done = run(tmp_path, LEAVES)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "lab leftovers after the run" in done.stdout and "mbt-left" in done.stdout
        assert "1 passed" in done.stdout  # the test itself passed: the session check failed the run
    finally:
        for path in (set(LAB_DIR.iterdir()) if LAB_DIR.exists() else set()) - before:
            if path.name.startswith("mbt-left"):
                shutil.rmtree(path, ignore_errors=True)


def test_a_clean_run_passes_even_beside_another_runs_objects(tmp_path: Path) -> None:
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    other = LAB_DIR / "mbt-other1x0"  # pid 1 is never a pytest run
    other.mkdir(exist_ok=True)
    try:
        done = run(tmp_path, "def test_ok():\n    pass\n")
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_under_xdist_the_controller_checks_the_workers_leftovers(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    before = set(LAB_DIR.iterdir()) if LAB_DIR.exists() else set()
    try:
        done = run(tmp_path, LEAVES, "-n", "2")
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stdout.count("lab leftovers after the run") == 1 and "mbt-left" in done.stdout
    finally:
        for path in (set(LAB_DIR.iterdir()) if LAB_DIR.exists() else set()) - before:
            if path.name.startswith("mbt-left"):
                shutil.rmtree(path, ignore_errors=True)


def test_clean_with_prefixes_leaves_other_runs_work_dirs() -> None:
    """`make demo` cleans only its own leftovers: a plain clean() removed the work dir (and so the
    socket) of every live lab agent on the machine, failing tests running beside it (ENOENT)."""
    from membrane_testkit.lab import cleanup
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    ours, other = LAB_DIR / f"mbt-gone{os.getpid()}", LAB_DIR / f"mbt-kept{os.getpid()}"
    try:
        ours.mkdir()
        other.mkdir()
        removed = cleanup.clean((ours.name,))
        assert removed["workdirs"] == [str(ours)] and not ours.exists() and other.exists()
    finally:
        shutil.rmtree(ours, ignore_errors=True)
        shutil.rmtree(other, ignore_errors=True)
