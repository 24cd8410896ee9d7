"""Reading the manifests `membranectl apply/delete -f` is given: YAML or JSON, one or many
documents, `kind: List` unpacked.

Strict like `kubectl apply --validate=strict`: a key given twice in one mapping is an error
naming the field path (YAML would keep the last one silently), and a file that does not parse
is one line, `FILE:LINE:COLUMN: problem`, never a traceback. Unknown fields are the agent's to
refuse (membrane.strict_fields), so every client gets the same answer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from membrane.labels import shown


class ManifestError(ValueError):
    """A manifest that cannot be read: one line naming the file and where."""


class _Loader(yaml.SafeLoader):
    pass


def _key_path(path: str, key: str) -> str:
    if key.replace("_", "").replace("-", "").isalnum() and not key[:1].isdigit():
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(shown(key, quote=False))}]"


def _duplicates(node: yaml.Node, path: str, found: list[tuple[str, yaml.Mark]]) -> None:
    """Every key that appears twice in one mapping, with its path and position."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = str(key_node.value)
            if key == "<<":  # a merge key is not a field
                continue
            where = _key_path(path, key)
            if key in seen:
                found.append((where, key_node.start_mark))
            seen.add(key)
            _duplicates(value_node, where, found)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _duplicates(item, f"{path}[{index}]", found)


def _position(name: str, mark: yaml.Mark | None) -> str:
    return f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name


def parse_manifests(text: str, name: str) -> list[Any]:
    """The documents of one file (`name` is how errors refer to it)."""
    docs: list[Any] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            duplicated: list[tuple[str, yaml.Mark]] = []
            _duplicates(node, "", duplicated)
            if duplicated:
                where, mark = duplicated[0]
                more = f" (and {len(duplicated) - 1} more)" if len(duplicated) > 1 else ""
                raise ManifestError(f"{_position(name, mark)}: duplicate field {json.dumps(where)}{more}")
            doc = loader.construct_document(node)
            if doc is None:
                continue
            if isinstance(doc, dict) and doc.get("kind") == "List":
                docs.extend(doc.get("items") or [])
            else:
                docs.append(doc)
    except yaml.MarkedYAMLError as exc:
        problem = " ".join(str(exc.problem or exc.context or "not valid YAML").split())
        raise ManifestError(f"{_position(name, exc.problem_mark or exc.context_mark)}: {problem}") from None
    except yaml.YAMLError as exc:  # e.g. a control character the reader refuses
        raise ManifestError(f"{name}: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    return docs


def read_manifests(files: list[str]) -> list[Any]:
    """Documents of every file given (`-` is stdin; a directory: its .yaml/.yml/.json files)."""
    docs: list[Any] = []
    for name in files:
        target = Path(name)
        paths = sorted(str(p) for p in target.iterdir() if p.suffix in (".yaml", ".yml", ".json")) \
            if name != "-" and target.is_dir() else [name]
        for path in paths:
            try:
                text = sys.stdin.read() if path == "-" else Path(path).read_text()
            except UnicodeDecodeError as exc:
                raise ManifestError(f"{path}: not UTF-8 text (byte {exc.start})") from None
            docs.extend(parse_manifests(text, "<stdin>" if path == "-" else path))
    return docs
