"""The prefilter manager: PacketFilter and CIDRDenyList records (and a node's own deny file) ->
the XDP prefilter's maps.

Registered with the state consumer for both kinds (`on_update` records, `apply` writes the
difference once per update, `resync` repairs drift), in both modes.

- **Rules.** The records become one ordered rule list (membrane/prefilter_converting.py:
  sanity checks first when a filter asks for them, then filters by name). A changed list is
  written into the bank of `mb_prefilter_rules_v1` not in force, then one write of
  `mb_prefilter_config_v1` switches the datapath to it (the bank and its rule count are one
  word): a packet is judged by the old set or the new one, never a mixture. An unchanged list
  writes nothing. More rules than the datapath holds refuse the update (`RuleCapacityError`,
  nothing written, the old set stays in force).
- **Deny lists.** Their prefixes are the desired contents of `mb_prefilter_cidr_v1`, written by
  difference in batches by a `MapManager` (longest prefix first, then stale prefixes; a change
  that would not fit is refused before anything is written).
- **Counters.** Every rule and list has a slot (`rule_ref`) in the per-CPU counters, carried
  by the flow events of its drops. Slots are stable while a rule or list exists (by name), are
  zeroed before a new owner uses them, and freed slots are reused last (a late flow event of a
  deleted rule rarely names a newer one).
- **Restart.** The first apply reads what the kernel enforces and adopts its slots: a rule
  encoded the same, a list sharing prefixes. A restarted agent with unchanged objects writes
  nothing, and the counters go on.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Network
from typing import Any, Protocol

from membrane.api.state_objects import CIDRDenyChunkState, CIDRDenyListState, Kind, PacketFilterState, StateObject
from membrane.map_plan import Op
from membrane.prefilter_converting import deny_prefixes, desired_rules, filter_rules
from membrane.prefilter_rules import MAX_REFS, MAX_RULES, EncodedRule, Rule, encode_rule

from .datapath.prefilter import ActiveSet, RuleCounters
from .map_managing import MapCapacityError, MapManager, MapPort
from .prefilter_queries import PrefilterCounters, PrefilterEntry

log = logging.getLogger("membrane.prefilter")

PREFILTER_KINDS = (Kind.PACKET_FILTER, Kind.CIDR_DENY_LIST, Kind.CIDR_DENY_CHUNK)
CIDR_ROLE = "prefilter_cidr"
FILE_LIST = "file"  # the kind of the node's own deny list (--prefilter-cidrs)


class PrefilterPort(MapPort, Protocol):
    """The datapath's prefilter maps (DatapathPort, or a fake)."""

    def prefilter_active(self) -> ActiveSet: ...
    def set_prefilter_active(self, active: ActiveSet) -> None: ...
    def write_prefilter_rules(self, bank: int, rules: Sequence[EncodedRule]) -> None: ...
    def prefilter_rules(self, bank: int, count: int) -> list[EncodedRule]: ...
    def prefilter_counters(self, refs: Iterable[int]) -> dict[int, RuleCounters]: ...
    def reset_prefilter_counters(self, refs: Iterable[int]) -> None: ...


class RuleCapacityError(MapCapacityError):
    """More rules than the datapath holds: nothing written, the old set stays in force."""

    def __init__(self, needed: int) -> None:
        RuntimeError.__init__(self, f"the prefilter would need {needed} rules, the datapath holds {MAX_RULES}: "
                                    f"change refused, the old rules stay enforced")
        self.role, self.needed, self.capacity, self.current = "prefilter_rules", needed, MAX_RULES, 0


# A counter's owner: ("rule", "filter.rule"), ("denylist", name) or ("file", path).
Owner = tuple[str, str]


@dataclass(frozen=True)
class CounterRow:
    """One rule or deny list with its counters (membranectl prefilter stats, metrics)."""

    kind: str  # "rule", "denylist", "file"
    name: str
    action: str  # drop, count, ratelimit (deny lists: drop)
    ref: int
    packets: int
    bytes: int
    dropped_packets: int
    dropped_bytes: int


class PrefilterManager:
    def __init__(self, port: PrefilterPort) -> None:
        self.port = port
        # Updates (longest prefix first), then deletes (shortest first): no source is briefly
        # judged by a prefix neither the old nor the new lists hold.
        self.maps = MapManager(port, (CIDR_ROLE,), order=((CIDR_ROLE, Op.UPDATE), (CIDR_ROLE, Op.DELETE)))
        self.lock = threading.Lock()  # this manager's; readers take it briefly for copies
        self.filters: dict[str, PacketFilterState] = {}
        # Deny lists: each list's head, and its chunks converted once when they arrive, so an
        # edit re-converts only the chunks it changed (membrane/prefilter_chunking.py).
        self.deny_records: dict[str, CIDRDenyListState] = {}
        self.deny_chunks: dict[str, dict[int, frozenset[IPv4Network]]] = {}
        self.file_prefixes: tuple[str, frozenset[IPv4Network]] | None = None
        self.refs: dict[Owner, int] = {}
        self.actions: dict[Owner, str] = {}
        self._free: deque[int] = deque(range(1, MAX_REFS))
        self.written: list[EncodedRule] = []
        self.active = ActiveSet(0, 0, 0)
        self.restored = False
        self.dirty = True
        self.skipped: dict[str, str] = {}  # filter -> why it is not enforced (a record the model refuses)
        # What the last successful apply put in force (readers: prefilter_entries).
        self.in_force: list[Rule] = []
        self.list_sizes: dict[Owner, int] = {}

    # --- records -------------------------------------------------------------------------------
    def on_update(self, kind: Kind, key: str, obj: StateObject | None) -> None:
        with self.lock:
            if kind is Kind.PACKET_FILTER:
                if isinstance(obj, PacketFilterState):
                    self.filters[key] = obj
                else:
                    self.filters.pop(key, None)
            elif kind is Kind.CIDR_DENY_LIST:
                if isinstance(obj, CIDRDenyListState):
                    self.deny_records[key] = obj
                    # An older operator's head carries the whole list: read it as one more chunk.
                    self._set_chunk(key, -1, deny_prefixes(obj.cidrs) if obj.cidrs else None)
                else:
                    self.deny_records.pop(key, None)
                    self._set_chunk(key, -1, None)
            elif kind is Kind.CIDR_DENY_CHUNK:
                name, _, bucket = key.rpartition("/")
                chunk = deny_prefixes(obj.cidrs) if isinstance(obj, CIDRDenyChunkState) else None
                self._set_chunk(name, int(bucket), chunk)
            else:
                return
            self.dirty = True

    def _set_chunk(self, name: str, bucket: int, prefixes: frozenset[IPv4Network] | None) -> None:
        chunks = self.deny_chunks.setdefault(name, {})
        if prefixes is None:
            chunks.pop(bucket, None)
        else:
            chunks[bucket] = prefixes
        if not chunks:
            del self.deny_chunks[name]

    def set_file_list(self, source: str, prefixes: frozenset[IPv4Network] | None) -> None:
        """The node's own deny list (--prefilter-cidrs FILE); None removes it."""
        with self.lock:
            self.file_prefixes = None if prefixes is None else (source, prefixes)
            self.dirty = True

    # --- desired contents ----------------------------------------------------------------------
    def _rules(self) -> list[Rule]:
        try:
            return desired_rules(self.filters.values())
        except (ValueError, KeyError, TypeError):  # RuleConversionError, PrefilterRuleError are ValueErrors
            pass  # a record the model refuses (the operator checks them): leave that filter out, say so
        good = {}
        for name, record in self.filters.items():
            try:
                filter_rules(record)
                good[name] = record
            except (ValueError, KeyError, TypeError) as exc:
                if self.skipped.get(name) != str(exc):
                    log.error("packet filter not enforced: the datapath cannot express it",
                              extra={"fields": {"filter": name, "reason": str(exc)}})
                self.skipped[name] = str(exc)
        return desired_rules(good.values())

    def _deny(self) -> dict[Owner, frozenset[IPv4Network]]:
        lists: dict[Owner, frozenset[IPv4Network]] = {
            ("denylist", name): frozenset().union(*self.deny_chunks.get(name, {}).values())
            for name in sorted(self.deny_records)}
        if self.file_prefixes is not None:
            lists[(FILE_LIST, self.file_prefixes[0])] = self.file_prefixes[1]
        return lists

    # --- writing -------------------------------------------------------------------------------
    def apply(self) -> dict[str, int]:
        """Write what changed; returns {"rules": written rule count or 0, "prefixes": deny entries
        changed}. RuleCapacityError / MapCapacityError: nothing written."""
        with self.lock:
            if not self.dirty and self.restored:
                return {"rules": 0, "prefixes": 0}
            self.skipped = {}
            rules = self._rules()
            if len(rules) > MAX_RULES:
                raise RuleCapacityError(len(rules))
            lists = self._deny()
            kernel_refs: set[int] = set()
            if not self.restored:
                kernel_refs = self._restore(rules, lists)
            owners: dict[Owner, str] = {("rule", rule.name): rule.action.word for rule in rules}
            owners.update(dict.fromkeys(lists, "drop"))
            new_owners = [owner for owner in owners if owner not in self.refs]
            if len(new_owners) > len(self._free) - len(kernel_refs & set(self._free)):
                raise RuleCapacityError(len(self.refs) + len(new_owners))
            fresh = self._assign(new_owners, kernel_refs)
            desired: dict[IPv4Network, int] = {}
            for owner in sorted(lists):  # a prefix in several lists counts for the first
                for prefix in lists[owner]:
                    desired.setdefault(prefix, self.refs[owner])
            self.maps.replace(CIDR_ROLE, desired)
            try:
                self.maps.check_capacity(self.maps.pending())
            except MapCapacityError:
                self.maps.discard()
                self._release(fresh)
                raise
            self.port.reset_prefilter_counters(self.refs[o] for o in fresh)
            encoded = [encode_rule(rule, self.refs[("rule", rule.name)]) for rule in rules]
            written_rules = 0
            if encoded != self.written or self.active.count != len(encoded):
                bank = 1 - self.active.bank
                self.port.write_prefilter_rules(bank, encoded)
                active = ActiveSet(bank, len(encoded), (self.active.generation + 1) & 0xFFFFFFFF)
                self.port.set_prefilter_active(active)
                self.active, self.written, written_rules = active, encoded, len(encoded)
            prefixes = sum(len(d.upserts) + len(d.deletes) for d in self.maps.apply().values())
            self._release([owner for owner in self.refs if owner not in owners])
            self.actions = owners
            self.in_force, self.list_sizes = list(rules), {owner: len(lists[owner]) for owner in sorted(lists)}
            self.dirty = False
            if written_rules or prefixes:
                log.info("prefilter applied", extra={"fields": {
                    "rules": len(encoded), "generation": self.active.generation, "prefix_changes": prefixes,
                    "prefixes": len(desired)}})
            return {"rules": written_rules, "prefixes": prefixes}

    def _assign(self, owners: Sequence[Owner], busy: set[int]) -> list[Owner]:
        taken = []
        for owner in owners:
            for _ in range(len(self._free)):
                ref = self._free.popleft()
                if ref not in busy:
                    break
                self._free.append(ref)
            self.refs[owner] = ref
            taken.append(owner)
        return taken

    def _release(self, owners: Iterable[Owner]) -> None:
        for owner in list(owners):
            ref = self.refs.pop(owner, None)
            if ref is not None:
                self._free.append(ref)

    def _restore(self, rules: Sequence[Rule], lists: Mapping[Owner, frozenset[IPv4Network]]) -> set[int]:
        """First apply: what the kernel enforces becomes what was written, and the slots of rules
        and lists still wanted are adopted. Returns every slot the kernel still uses."""
        self.active = self.port.prefilter_active()
        self.written = self.port.prefilter_rules(self.active.bank, min(self.active.count, MAX_RULES))
        self.maps.resync()
        by_content: dict[EncodedRule, list[int]] = {}
        for held in self.written:
            by_content.setdefault(replace(held, rule_ref=0), []).append(held.rule_ref)
        adopted: set[int] = set()
        for wanted in rules:
            candidates = by_content.get(replace(encode_rule(wanted, 1), rule_ref=0), [])
            ref = next((r for r in candidates if r not in adopted), None)
            if ref is not None:
                self.refs[("rule", wanted.name)] = ref
                adopted.add(ref)
        by_ref: dict[int, set[IPv4Network]] = {}
        for prefix, ref in self.maps.written[CIDR_ROLE].items():
            by_ref.setdefault(ref, set()).add(prefix)
        for owner, prefixes in lists.items():
            best = max(((len(prefixes & held), ref) for ref, held in by_ref.items() if ref not in adopted),
                       default=(0, 0))
            if best[0]:
                self.refs[owner] = best[1]
                adopted.add(best[1])
        for ref in adopted:
            self._free.remove(ref)
        self.restored = True
        if adopted:
            log.info("prefilter state adopted from the kernel", extra={"fields": {
                "rules": self.active.count, "generation": self.active.generation, "slots": len(adopted)}})
        return {rule.rule_ref for rule in self.written} | set(by_ref)

    def resync(self) -> dict[str, int]:
        """Compare the kernel with what was written and write the repair (and whatever else is
        pending, e.g. a changed deny file) at once. Returns the drift found, per map."""
        with self.lock:
            if not self.restored:
                return {}  # nothing written yet: the first apply reads the kernel anyway
            active = self.port.prefilter_active()
            kernel = self.port.prefilter_rules(active.bank, min(active.count, MAX_RULES))
            rules_drift = 0
            if active != self.active or kernel != self.written:
                rules_drift = 1
                # Rewrite the whole set into the other bank of what the kernel has in force.
                self.active = ActiveSet(active.bank, active.count, active.generation)
                self.written = []
                self.dirty = True
            cidr_drift = self.maps.resync()[CIDR_ROLE]
            if cidr_drift:
                self.dirty = True
        if self.dirty:
            try:
                self.apply()
            except MapCapacityError as exc:
                log.error("prefilter repair refused: a map would overflow", extra={"fields": {"reason": str(exc)}})
        return {"repaired_prefilter_rules": rules_drift, "repaired_prefilter_cidr": cidr_drift}

    # --- readers -------------------------------------------------------------------------------
    def owner_of(self, ref: int) -> Owner | None:
        """Which rule or list a counter slot (a flow event's rule_ref) belongs to."""
        with self.lock:
            return next((owner for owner, r in self.refs.items() if r == ref), None)

    def counters(self) -> list[CounterRow]:
        with self.lock:
            refs, actions = dict(self.refs), dict(self.actions)
        values = self.port.prefilter_counters(refs.values())
        return [CounterRow(kind, name, actions.get((kind, name), "drop"), ref, c.packets, c.bytes,
                           c.dropped_packets, c.dropped_bytes)
                for (kind, name), ref in sorted(refs.items()) for c in (values[ref],)]

    # --- the read-only query interface (agent/prefilter_queries.PrefilterQueries) ---------------
    def prefilter_entries(self) -> list[PrefilterEntry]:
        """Deny lists, then the rules in force, as the last apply left them (copies)."""
        with self.lock:
            lists = [PrefilterEntry(name, "deny-list", "drop", name if kind != FILE_LIST else FILE_LIST, prefixes=size)
                     for (kind, name), size in self.list_sizes.items()]
            rules = [PrefilterEntry(rule.name, "rule", rule.action.word, rule.name.rpartition(".")[0], rule)
                     for rule in self.in_force]
        return lists + rules

    def prefilter_counters(self) -> dict[str, PrefilterCounters]:
        return {row.name: PrefilterCounters(row.packets, row.bytes, row.dropped_packets, row.dropped_bytes)
                for row in self.counters()}

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"generation": self.active.generation, "rules": self.active.count,
                    "prefixes": len(self.maps.written.get(CIDR_ROLE, {})), "filters": sorted(self.filters),
                    "deny_lists": sorted(self.deny_records), "not_enforced": dict(self.skipped)}

