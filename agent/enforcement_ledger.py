"""EnforcementLedger: which version of the desired state this node's datapath enforces.

Every change handed to the agent carries a version: in standalone mode the number of a store
batch (`membranectl apply` / `delete`, counted from 1 at each start), in Kubernetes mode the
operator's state stream version. A version is *enforced* once every map write it caused has
landed and the datapath's policy revision has been bumped after them (so established flows
are judged again, see bpf/lib/flow.h): from then on no packet gets a verdict of an older
version. A version can instead be *refused* (a map would overflow, agent/policy_syncing.py):
nothing of it was written and the old state stays enforced.

`wait(version, timeout)` is what `apply --wait` blocks on. Thread-safe; no I/O.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

Outcome = Literal["enforced", "refused", "pending"]
MAX_REFUSALS = 64  # refusal reasons kept (the newest), for waiters and status


class EnforcementLedger:
    def __init__(self, node: str) -> None:
        self.node = node
        self._cond = threading.Condition()
        self.recorded = 0  # newest version handed to the agent
        self.enforced = 0  # newest version whose writes landed
        self.enforced_at: float | None = None  # time.time() of the last enforcement
        self._refused: dict[int, str] = {}

    def next_version(self) -> int:
        """Standalone mode: the version of a new store batch."""
        with self._cond:
            self.recorded += 1
            return self.recorded

    def record(self, version: int) -> None:
        """Kubernetes mode: `version` of the stream was handed to the agent."""
        with self._cond:
            self.recorded = max(self.recorded, version)

    def restart(self) -> None:
        """Versions start over (Kubernetes mode: another operator's stream, unrelated numbers)."""
        with self._cond:
            self.recorded = self.enforced = 0
            self._refused.clear()
            self._cond.notify_all()

    def enforce(self, version: int) -> None:
        """Every write of `version` (and of all before it) landed."""
        with self._cond:
            if version > self.enforced:
                self.enforced = version
                self.enforced_at = time.time()
            self.recorded = max(self.recorded, version)
            self._cond.notify_all()

    def refuse(self, version: int, reason: str) -> None:
        """Nothing of `version` was written: the previous state stays enforced."""
        with self._cond:
            self._refused[version] = reason
            while len(self._refused) > MAX_REFUSALS:
                del self._refused[min(self._refused)]
            self._cond.notify_all()

    def outcome(self, version: int) -> Outcome:
        with self._cond:
            return self._outcome(version)

    def _outcome(self, version: int) -> Outcome:
        if self.enforced >= version:
            return "enforced"
        if version in self._refused:
            return "refused"
        return "pending"

    def reason(self, version: int) -> str | None:
        with self._cond:
            return self._refused.get(version)

    def wait(self, version: int, timeout: float) -> Outcome:
        """Block until `version` is enforced or refused, or `timeout` seconds passed."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                outcome = self._outcome(version)
                left = deadline - time.monotonic()
                if outcome != "pending" or left <= 0:
                    return outcome
                self._cond.wait(left)

    def status(self) -> dict[str, Any]:
        with self._cond:
            last = max(self._refused) if self._refused else None
            return {"node": self.node, "recorded_version": self.recorded, "enforced_version": self.enforced,
                    "enforced_at": self.enforced_at,
                    "last_refused": {"version": last, "reason": self._refused[last]} if last is not None else None}
