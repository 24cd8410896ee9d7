"""Who imports what, read from the source (AST), with the package-dir mapping of pyproject.toml:
membrane/ is `membrane`, agent/ `membrane.agent`, operator/ `membrane.operator` (the shipped
product); membrane_testkit/ (lab, API stand-in, fakes; not shipped) is `membrane_testkit`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_FOLDERS = {"membrane": "membrane", "agent": "membrane.agent", "operator": "membrane.operator"}
TESTKIT_FOLDERS = {"membrane_testkit": "membrane_testkit"}


def module_files(folders: dict[str, str] | None = None) -> dict[str, Path]:
    """Module name -> file, for every module under `folders` (default: product and testkit)."""
    found: dict[str, Path] = {}
    for folder, package in (folders or PRODUCT_FOLDERS | TESTKIT_FOLDERS).items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if not (folder == "membrane" and parts and parts[0] in ("agent", "operator")):
                found[name] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of every module `path` imports (at the top or inside functions)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def import_graph(folders: dict[str, str] | None = None) -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in module_files(folders).items()}


def within(name: str, prefixes: set[str] | frozenset[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)
