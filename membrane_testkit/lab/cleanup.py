"""Remove what a crashed lab run left behind: namespaces, pins and work dirs with lab prefixes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from . import cgroups, netns
from .node import BPFFS_LAB, LAB_DIR

PREFIXES = ("mbt-", "mbdemo-", "mbbench-")


def leftovers(prefixes: tuple[str, ...] = PREFIXES) -> dict[str, list[str]]:
    return {"netns": [n for p in prefixes for n in netns.listed(p)],
            "pins": sorted(str(p) for p in BPFFS_LAB.iterdir() if p.name.startswith(prefixes))
            if BPFFS_LAB.exists() else [],
            "workdirs": sorted(str(p) for p in LAB_DIR.iterdir() if p.name.startswith(prefixes))
            if LAB_DIR.exists() else [],
            "cgroups": cgroups.listed(prefixes)}


def clean(prefixes: tuple[str, ...] = PREFIXES) -> dict[str, list[str]]:
    """Remove every lab object named with one of `prefixes`, live or not: with the default, also
    other runs' (tests, benches) on this machine. Callers that only mean their own pass theirs."""
    found = leftovers(prefixes)
    for name in found["netns"]:
        netns.delete(name)
    for path in found["pins"] + found["workdirs"]:
        shutil.rmtree(path, ignore_errors=True)
    for path in found["cgroups"]:
        try:
            cgroups.remove(Path(path))
        except OSError:
            pass  # still busy: a live run's
    return found


if __name__ == "__main__":
    removed = clean()
    print({k: len(v) for k, v in removed.items()}, file=sys.stderr)
