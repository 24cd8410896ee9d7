"""Crash-safe JSON files: write to a temporary file, fsync, rename.

The agent persists IPAM and endpoint state before it answers kubelet, so a `kill -9` at any
moment leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # writers may race
    with open(tmp, "w") as handle:
        # dumps, not dump: only the one-shot path uses the C encoder (dump is pure Python, ~10x slower)
        handle.write(json.dumps(data, separators=(",", ":"), sort_keys=True))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: Path, default: Any = None) -> Any:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return default


def remove(path: Path, durable: bool = False) -> None:
    """Delete a file if it exists; `durable`: the removal survives a crash once this returns."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    if durable:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
