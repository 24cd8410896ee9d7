"""The reference CNI library as container runtimes use it: a small libcni client
(tests/netns/libcni-client/main.go, built from Debian's golang-github-appc-cni-dev sources,
offline, GOPATH mode) that runs a conflist's chain the way containerd or CRI-O does."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SRC = ROOT / "tests" / "netns" / "libcni-client"
CLIENT = ROOT / "build" / "libcni-client"
REFERENCE_PLUGINS = Path("/usr/lib/cni")  # Debian's containernetworking-plugins


def client() -> Path:
    """The client binary, built when missing or older than its source."""
    if not CLIENT.exists() or CLIENT.stat().st_mtime < (CLIENT_SRC / "main.go").stat().st_mtime:
        CLIENT.parent.mkdir(exist_ok=True)
        env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOFLAGS": "",
               "CGO_ENABLED": "0", "GOPROXY": "off"}
        env.setdefault("GOCACHE", str(Path(env.get("HOME", "/tmp")) / ".cache" / "go-build"))
        done = subprocess.run(["go", "build", "-o", str(CLIENT), "."], cwd=CLIENT_SRC, env=env,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"building the libcni client failed: {done.stderr.strip()}")
    return CLIENT
