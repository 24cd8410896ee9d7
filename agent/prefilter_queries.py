"""The read-only query interface of the XDP prefilter's state (metrics, membranectl prefilter).

Readers type against `PrefilterQueries`, never against the prefilter manager: they cannot take
its lock, read its fields or write a map. The manager implements it; each answer is a copy
taken under its own lock. Counters are read from the per-CPU counter map at the time of the
question (summed over CPUs), so the datapath pays nothing for being watched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from membrane.prefilter_rules import Rule

EntryKind = Literal["rule", "deny-list"]


@dataclass(frozen=True)
class PrefilterEntry:
    """One thing the prefilter counts: a rule, or a CIDR deny list (its prefixes share a counter)."""

    name: str  # a rule: `<PacketFilter>.<rule>` or `sanity.<check>`; a deny list: its name
    kind: EntryKind
    action: str  # drop | count | ratelimit (a deny list drops)
    origin: str  # the PacketFilter or CIDRDenyList it came from; `sanity`; `file` (--prefilter-deny-file)
    rule: Rule | None = None  # a rule: what it matches
    prefixes: int = 0  # a deny list: how many prefixes it holds


@dataclass(frozen=True)
class PrefilterCounters:
    """Since the agent's maps were created (counters survive agent restarts with the pins)."""

    packets: int = 0  # matched
    bytes: int = 0
    dropped_packets: int = 0  # of those, dropped
    dropped_bytes: int = 0


class PrefilterQueries(Protocol):
    def prefilter_entries(self) -> list[PrefilterEntry]:
        """In the order a packet meets them: deny lists, then the rules in force."""
        ...

    def prefilter_counters(self) -> dict[str, PrefilterCounters]:
        """Entry name -> its counters (entries no longer in force are left out)."""
        ...
