"""An operator run as its own process against the API stand-in, with short election timings:
the harness of the multi-replica e2e tests (failover, leader-only stream)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from membrane_testkit.kubeapi import KubeApiServer
from membrane_testkit.lab.cluster import free_port
from membrane_testkit.waiting import wait_for


class OperatorProcess:
    def __init__(self, api: KubeApiServer, name: str, log_dir: Path, cluster_cidr: str,
                 extra_env: dict[str, str] | None = None) -> None:
        self.name, self.http, self.grpc = name, free_port(), free_port()
        self.log_path = log_dir / f"{name}.log"
        env = {**os.environ, "MEMBRANE_API_SERVER": api.url, "MEMBRANE_POD_NAME": name,
               "MEMBRANE_INSTALL_CRDS": "true", "MEMBRANE_CLUSTER_CIDR": cluster_cidr,
               "MEMBRANE_HTTP_ADDR": f"127.0.0.1:{self.http}",
               "MEMBRANE_GRPC_ADDR": f"127.0.0.1:{self.grpc}",
               "MEMBRANE_LEASE_DURATION_SECONDS": "3", "MEMBRANE_RENEW_DEADLINE_SECONDS": "2",
               "MEMBRANE_RETRY_PERIOD_SECONDS": "0.3", "MEMBRANE_RESYNC_SECONDS": "0.2",
               **(extra_env or {})}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "membrane.operator.main"], env=env,
                                         stdout=out, stderr=out, stdin=subprocess.DEVNULL)

    def status(self, path: str) -> int:
        """HTTP status of a probe path; 0 while nothing answers."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def ready(self) -> bool:
        return self.status("/readyz") == 200

    def metric(self, name: str) -> float:
        """Sum of a metric's samples, optionally filtered by `name{label="v",...}`; 0 when unreachable."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        base, _, labels = name.partition("{")
        wanted = [part for part in labels.rstrip("}").split(",") if part]
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(base) and line[len(base):len(base) + 1] in (" ", "{")
                   and all(part in line for part in wanted))

    def wait_ready(self) -> None:
        assert wait_for(lambda: self.ready() or self.proc.poll() is not None, timeout=30) \
            and self.proc.poll() is None, self.log_path.read_text()[-3000:]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
