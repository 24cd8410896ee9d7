"""Flatten a C entry file and its local ``#include "..."`` headers into one text.

bcc only rewrites map operations (``map.lookup(&k)``, ...) that appear in
the main file it compiles; the same calls inside an included header stay
indirect calls and the verifier rejects them ("unknown opcode 8d"). So the
loader hands bcc one flattened text. ``#line`` markers keep compiler errors
pointing at the real file and line. Each local file is inlined once (all
our headers have include guards anyway); ``<system>`` includes are left
for clang.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

_LOCAL_INCLUDE: Final = re.compile(r'^\s*#\s*include\s+"(?P<path>[^"]+)"')


class IncludeError(RuntimeError):
    """A local include names a file that does not exist."""


def flatten_sources(entries: list[Path]) -> str:
    """Several entry files (one per hook) as one compilation unit, shared headers once.

    One unit means one compile per agent start and one set of unpinned maps
    (event scratch, rate bucket) for every program.
    """
    lines: list[str] = []
    seen: set[Path] = set()
    for entry in entries:
        _inline(entry.resolve(), lines, seen)
    return "\n".join(lines) + "\n"


def _inline(path: Path, lines: list[str], seen: set[Path]) -> None:
    if path in seen:
        return
    seen.add(path)
    lines.append(f'#line 1 "{path}"')
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = _LOCAL_INCLUDE.match(line)
        if match is None:
            lines.append(line)
            continue
        included = (path.parent / match.group("path")).resolve()
        if not included.is_file():
            raise IncludeError(f"{path}:{number}: included file {included} not found")
        _inline(included, lines, seen)
        lines.append(f'#line {number + 1} "{path}"')
