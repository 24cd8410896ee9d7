"""Plain-text tables for people."""

from __future__ import annotations

from typing import Any


def render_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    cells = [[title for title, _ in columns]]
    cells += [[_cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n" for line in cells)


def _cell(value: Any) -> str:
    if value in (None, "", []):
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
