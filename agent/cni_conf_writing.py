"""The node's CNI network configuration, written only while the agent can serve it.

With `--write-cni-conf-when-ready PATH` the agent copies `--cni-conf-source` to PATH once it is
ready (Kubernetes mode: the first complete state applied), atomically (write aside, rename),
so the container runtime never sees a node advertising pod networking that cannot work yet.
On SIGTERM, `--cni-uninstall` decides whether the file goes: `always` removes it (pods then
fail to start with "no network" instead of code 11 from a missing agent), `never` keeps it (a
restart or rolling upgrade keeps the node's pods starting as soon as the next agent is ready).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("membrane.cni_conf")


def write_conf(source: Path, dest: Path) -> bool:
    """Copy the network configuration to `dest` atomically; False when it is there already."""
    text = source.read_text()
    json.loads(text)  # never hand the runtime a broken file
    try:
        if dest.read_text() == text:
            return False
    except OSError:
        pass
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, dest)
    log.info("CNI configuration written", extra={"fields": {"path": str(dest)}})
    return True


def remove_conf(dest: Path) -> bool:
    try:
        dest.unlink()
    except FileNotFoundError:
        return False
    log.info("CNI configuration removed", extra={"fields": {"path": str(dest)}})
    return True
