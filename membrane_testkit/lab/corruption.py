"""The state corruption matrix: every state file of the agent x every way it can be damaged,
with the outcome the agent must reach. Data only (plus the byte-level damage itself), so the
same table drives the standalone netns test, the Kubernetes-mode e2e test and any future
store format: a new format changes the file list here, never the kinds or the checks.

Outcomes:
- REBUILT: the agent starts and nothing is lost: the same endpoints (same links, addresses,
  identities), the same objects and the same enforced policy, rebuilt from the kernel (links,
  their aliases, pinned maps) or refetched from the operator.
- REFUSED: the agent exits at once with one line (no traceback) naming the file and the fix,
  keeps a `.damaged` copy, and changes nothing: every pod stays wired, the policy in the maps
  stays enforced.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum
from pathlib import Path


class Damage(str, Enum):  # noqa: UP042 - StrEnum would change what str() prints in reports
    TRUNCATED = "truncated"  # the first half of the bytes survive
    GARBAGE = "garbage"  # overwritten with as many random bytes
    EMPTY = "empty"  # zero bytes
    DELETED = "deleted"  # the file is gone
    APPENDED = "appended"  # random bytes (newlines included) after the intact content


class Outcome(str, Enum):  # noqa: UP042 - StrEnum would change what str() prints in reports
    REBUILT = "rebuilt"
    REFUSED = "refused"


@dataclass(frozen=True)
class StateFile:
    """A state file (a glob under the state dir: every match is damaged) and what each kind
    of damage must lead to."""

    pattern: str
    mode: str  # "standalone" | "kubernetes"
    role: str
    outcomes: dict[Damage, Outcome]

    def outcome(self, damage: Damage) -> Outcome:
        return self.outcomes[damage]


def _all(outcome: Outcome) -> dict[Damage, Outcome]:
    return dict.fromkeys(Damage, outcome)


# Irreplaceable: only appended bytes after intact content can be dropped (the witness proves
# nothing acknowledged is missing); anything else refuses.
_IRREPLACEABLE = {**_all(Outcome.REFUSED), Damage.APPENDED: Outcome.REBUILT}

STATE_FILES: tuple[StateFile, ...] = (
    StateFile("state.db", "standalone", "state store: the object store (Namespaces, Nodes, Pods, NetworkPolicies: "
              "irreplaceable), endpoint records, IPAM cursor, identity numbering", _IRREPLACEABLE),
    StateFile("state.db", "kubernetes", "state store: the cluster cache (refetched from the operator), endpoint "
              "records (from veth aliases + the endpoint map), IPAM cursor", _all(Outcome.REBUILT)),
)


@dataclass(frozen=True)
class Case:
    file: StateFile
    damage: Damage

    @property
    def outcome(self) -> Outcome:
        return self.file.outcome(self.damage)

    @property
    def id(self) -> str:
        return f"{self.file.pattern.replace('/', '-').replace('*', 'each')}-{self.damage.value}"


def matrix(mode: str) -> list[Case]:
    """Every file of `mode` x every damage."""
    return [Case(f, d) for f in STATE_FILES if f.mode == mode for d in Damage]


def damage_file(path: Path, damage: Damage, seed: int = 7) -> None:
    """Damage one file in place (it must exist)."""
    rng = random.Random(f"{seed}:{path.name}:{damage.value}")
    data = path.read_bytes()
    if damage is Damage.TRUNCATED:
        path.write_bytes(data[:len(data) // 2])
    elif damage is Damage.GARBAGE:
        path.write_bytes(bytes(rng.randrange(256) for _ in range(max(len(data), 16))))
    elif damage is Damage.EMPTY:
        path.write_bytes(b"")
    elif damage is Damage.DELETED:
        path.unlink()
    elif damage is Damage.APPENDED:
        path.write_bytes(data + b"\n" + bytes(rng.randrange(256) for _ in range(64)) + b"\n\x00garbage")


def apply_case(state_dir: Path, case: Case, seed: int = 7) -> list[Path]:
    """Damage every file of the case under state_dir; returns them (an empty list is a setup bug)."""
    paths = sorted(state_dir.glob(case.file.pattern))
    for path in paths:
        damage_file(path, case.damage, seed)
    return paths
