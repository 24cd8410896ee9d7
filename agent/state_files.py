"""Reading the agent's state files when they may be damaged, and what happens then.

Every file the agent keeps is either rebuilt from the kernel (endpoint records, IPAM, identities:
the pods' veths, their aliases and the pinned maps are ground truth), refetched (the Kubernetes
mode cluster cache: the operator has it all), or irreplaceable (the standalone object store:
Pods and policies were only ever given to this agent). A damaged file is never read as empty:
it is set aside as `NAME.damaged` and then rebuilt, or the agent refuses to start with one line
naming the file and the fix (`StateDamaged`). Nothing running is torn down because a file is
missing or unreadable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from .start_refusal import StartRefused

log = logging.getLogger("membrane.state")

DAMAGED_SUFFIX = ".damaged"
ACCEPT_LOSS_FLAG = "--accept-state-loss"


class DamagedFile(ValueError):
    """A state file that does not parse as what it should hold."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class StateDamaged(StartRefused):
    """A damaged state file the kernel cannot rebuild: refuse, naming the file and the fix."""

    def __init__(self, path: Path, reason: str, fix: str) -> None:
        super().__init__(f"state file {path} is damaged ({reason}); a copy is kept as "
                         f"{damaged_path(path).name}; {fix}")
        self.path = path


def damaged_path(path: Path) -> Path:
    return path.with_name(path.name + DAMAGED_SUFFIX)


def set_aside(path: Path, keep_original: bool = False) -> Path | None:
    """Keep the damaged file as NAME.damaged (moved, or copied with keep_original); None when
    there was no file."""
    target = damaged_path(path)
    try:
        if keep_original:
            shutil.copyfile(path, target)
            os.chmod(target, 0o600)  # what it holds is as private as the original
        else:
            os.replace(path, target)
    except FileNotFoundError:
        return None
    log.warning("damaged state file set aside", extra={"fields": {"file": str(path), "kept_as": str(target)}})
    return target


def read_json_checked(path: Path) -> tuple[Any, bool]:
    """(data, salvaged): the file's JSON, None when the file does not exist.

    Bytes after one complete JSON document (appended garbage) are dropped and `salvaged` is
    True; anything else that does not parse (empty, truncated, garbage) raises DamagedFile."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, False
    if not raw.strip():
        raise DamagedFile(path, "empty")
    try:
        text = raw.decode()
    except UnicodeDecodeError as exc:
        text = raw[:exc.start].decode()  # a document may still end before the first bad byte
        if not text.strip():
            raise DamagedFile(path, f"not UTF-8 text at byte {exc.start}") from None
    else:
        try:
            return json.loads(text), False
        except ValueError:
            pass
    try:
        data, end = json.JSONDecoder().raw_decode(text.lstrip())
    except ValueError as exc:
        raise DamagedFile(path, f"not valid JSON: {str(exc).split(':')[0]}") from None
    log.warning("state file has trailing bytes after its JSON", extra={"fields": {"file": str(path), "at": end}})
    return data, True
