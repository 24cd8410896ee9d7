"""membranectl's prefilter questions (`prefilter list`, `prefilter stats`), answered through
the prefilter's read-only query interface (agent/prefilter_queries.py)."""

from __future__ import annotations

from typing import Any

from membrane.prefilter_describing import describe

from .prefilter_queries import PrefilterCounters, PrefilterQueries


def prefilter_list(queries: PrefilterQueries) -> list[dict[str, Any]]:
    """Every rule and deny list in force, in the order a packet meets them."""
    rows = []
    for order, entry in enumerate(queries.prefilter_entries(), start=1):
        matches = describe(entry.rule) if entry.rule is not None else f"source in {entry.prefixes} prefix(es)"
        rows.append({"order": order, "name": entry.name, "kind": entry.kind, "action": entry.action,
                     "origin": entry.origin, "matches": matches})
    return rows


def prefilter_stats(queries: PrefilterQueries) -> list[dict[str, Any]]:
    """Each entry's counters (matched and, of those, dropped), read from the datapath now."""
    counters = queries.prefilter_counters()
    rows = []
    for entry in queries.prefilter_entries():
        found = counters.get(entry.name, PrefilterCounters())
        rows.append({"name": entry.name, "kind": entry.kind, "action": entry.action,
                     "packets": found.packets, "bytes": found.bytes,
                     "dropped_packets": found.dropped_packets, "dropped_bytes": found.dropped_bytes})
    return rows
