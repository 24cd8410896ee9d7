"""What build of membrane is running: package version and source commit.

The commit comes from `MEMBRANE_BUILD_COMMIT` (set when an image is built) or, when running
from a git checkout (tests, the lab), from its HEAD; "unknown" otherwise.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

COMMIT_ENV = "MEMBRANE_BUILD_COMMIT"


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str
    python_version: str


def _version() -> str:
    try:
        return metadata.version("membrane")
    except metadata.PackageNotFoundError:
        return "unknown"


def _commit() -> str:
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV].strip()[:40]
    source = Path(__file__).resolve().parent.parent
    if not (source / ".git").exists():
        return "unknown"
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


@functools.cache
def build_info() -> BuildInfo:
    """Asked once per process."""
    return BuildInfo(_version(), _commit(), platform.python_version())
