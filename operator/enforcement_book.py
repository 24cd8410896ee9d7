"""Which nodes enforce each NetworkPolicy, from the state stream's versions and the agents' acks
(pure: no I/O, no clock).

Every commit of the state log has a version; a policy's current spec is carried by the version
that last changed it (`committed`). An agent acks a version once its datapath enforces
everything up to it (map writes landed, established flows judged again: the agent's
EnforcementLedger). So a node enforces a policy's current spec exactly when its ack is at
least that version. `annotations` turns this into what the operator writes on each policy:

- `membrane.io/enforced`: "N/M", N of the M nodes enforce the current spec;
- `membrane.io/enforced-generation`: the newest `metadata.generation` every node enforced (kept
  while a newer generation is on its way), so `kubectl wait --for=jsonpath=...` on it against
  the policy's generation is "applied means enforced" for Kubernetes users.

M counts the cluster's Node objects: a node whose agent never acked (down, or not yet moved
to the leader, the only replica that serves the stream) counts as not enforcing, never as
enforcing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from membrane.api.state_objects import Change, Kind, PolicyState

ENFORCED = "membrane.io/enforced"
ENFORCED_GENERATION = "membrane.io/enforced-generation"


@dataclass
class _Policy:
    version: int  # the state version carrying its current spec
    generation: int  # metadata.generation of that spec (0: unknown)
    enforced_generation: int | None = None  # newest generation all nodes enforced


def _generation(state: PolicyState) -> int:
    try:
        return int(json.loads(state.object_json).get("metadata", {}).get("generation") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


class EnforcementBook:
    def __init__(self) -> None:
        self._policies: dict[str, _Policy] = {}  # "namespace/name" -> facts

    def restart(self) -> None:
        """A new stream history (operator start): versions start over."""
        self._policies.clear()

    def committed(self, version: int, changes: Iterable[Change]) -> None:
        """A commit of the state log: policies it upserted now need `version`."""
        for change in changes:
            if change.key[0] is not Kind.POLICY:
                continue
            name = change.key[1]
            if change.obj is None:
                self._policies.pop(name, None)
            elif isinstance(change.obj, PolicyState):
                old = self._policies.get(name)
                self._policies[name] = _Policy(version, _generation(change.obj),
                                               old.enforced_generation if old is not None else None)

    def policies(self) -> list[str]:
        return sorted(self._policies)

    def annotations(self, nodes: Iterable[str], acked: Mapping[str, int]) -> dict[str, dict[str, str]]:
        """The annotations each policy should carry, given the cluster's nodes and their acks."""
        names = sorted(set(nodes))
        out: dict[str, dict[str, str]] = {}
        for key, policy in self._policies.items():
            enforcing = sum(1 for node in names if acked.get(node, 0) >= policy.version)
            if names and enforcing == len(names):
                policy.enforced_generation = policy.generation
            values = {ENFORCED: f"{enforcing}/{len(names)}"}
            if policy.enforced_generation is not None:
                values[ENFORCED_GENERATION] = str(policy.enforced_generation)
            out[key] = values
        return out
