"""The product is the product: the wheel `pip` builds from pyproject.toml ships the agent, the
operator, membranectl and their shared core, and none of the test kit (membrane_testkit: the
namespace lab, the Kubernetes API stand-in, fakes).

The wheel is built for real (pip, with the build backend pyproject.toml declares) from a copy of
the source, so the worktree gets no build/ or egg-info, and then read as a zip.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .imports import PRODUCT_FOLDERS, module_files, within

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ("pyproject.toml", "README.md", "membrane", "agent", "operator", "membrane_testkit")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Every file of the built wheel: its path inside the wheel -> its contents."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "out"
    src.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, f"pip wheel failed:\n{built.stdout}{built.stderr}"
    [path] = out.glob("membrane-*.whl")
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _module(path: str) -> str:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_wheel_ships_no_test_kit(wheel: dict[str, bytes]) -> None:
    tops = {name.split("/")[0] for name in wheel}
    assert tops == {"membrane", "membrane-0.1.0.dist-info"}, f"unexpected top-level entries: {sorted(tops)}"
    kit = [name for name in wheel
           if name.startswith(("membrane_testkit/", "membrane/lab/", "membrane/testing/"))]
    assert not kit, f"test support in the wheel: {kit}"
    top_level = wheel["membrane-0.1.0.dist-info/top_level.txt"].decode().split()
    assert top_level == ["membrane"]


def test_the_wheel_ships_every_product_module_and_its_data(wheel: dict[str, bytes]) -> None:
    """A package left out of pyproject's list would ship a product that fails to import."""
    shipped = {_module(name) for name in wheel if name.endswith(".py")}
    missing = sorted(set(module_files(PRODUCT_FOLDERS)) - shipped)
    assert not missing, f"product modules missing from the wheel (pyproject [tool.setuptools] packages): {missing}"
    assert "membrane/py.typed" in wheel and "membrane/schemas/kubernetes-strict.json" in wheel
    entry_points = wheel["membrane-0.1.0.dist-info/entry_points.txt"].decode()
    for script in ("membrane-agent", "membranectl", "membrane-operator"):
        assert f"{script} = membrane." in entry_points


def test_nothing_in_the_wheel_imports_the_test_kit(wheel: dict[str, bytes]) -> None:
    """What ships, read from the wheel itself (tests/quality/test_layers.py checks the source)."""
    bad = []
    for name, data in sorted(wheel.items()):
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(data, name)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            bad += [f"{name} imports {n}" for n in names
                    if within(n, {"membrane_testkit", "membrane.lab", "membrane.testing"})]
    assert not bad, "the shipped wheel imports test support:\n" + "\n".join(bad)
