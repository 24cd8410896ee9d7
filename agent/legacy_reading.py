"""Readers of the JSON formats the agent wrote before its state moved into state.db.

Kept only to migrate a state directory written by an earlier release (nothing writes these
formats any more; agent/state_storing.py, agent/object_store.py and agent/cluster_persisting.py
call these once, import the result in one transaction and move the files to `pre-sqlite/`):

- the standalone object store: a snapshot `objects.json` (`{"seq": N, "objects": [...]}`, or a
  bare list before batches had numbers) plus a journal `objects.json.journal`, one JSON line
  per batch (`{"seq": N, "changes": [[key, object or null], ...]}`, or `{"key", "data"}` lines
  before that). A torn last line is a batch that was never acknowledged.
- the Kubernetes-mode cluster cache: `cluster-state.json` (version, stream id, objects) plus
  `cluster-journal.jsonl`, one line per applied delta; loading stops at the first torn or
  non-consecutive line.

Damage is reported as `DamagedFile` naming the file, with the same checks the old loaders made,
including the kernel's witness (a store that ends before the batch the witness recorded).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from membrane.api.state_objects import (
    CIDRDenyListState,
    EndpointPortState,
    EndpointSliceState,
    EndpointState,
    IdentityState,
    Kind,
    NamedPortState,
    NamespaceState,
    NodeState,
    PacketFilterState,
    PolicyState,
    ServicePortState,
    ServiceState,
    SliceEndpointState,
    StateKey,
    StateObject,
)
from membrane.k8s_models import PREFILTER_KINDS, parse_object

from .datapath.witness import Mark
from .state_files import DamagedFile, read_json_checked

log = logging.getLogger("membrane.state")

OBJECTS_FILE = "objects.json"
OBJECTS_JOURNAL = "objects.json.journal"
CLUSTER_FILE = "cluster-state.json"
CLUSTER_JOURNAL = "cluster-journal.jsonl"
CLUSTER_SCOPED = frozenset({"Namespace", "Node", *PREFILTER_KINDS})
ObjectKey = tuple[str, str, str]


def object_key(data: dict[str, Any]) -> ObjectKey:
    """kind, namespace ("" when cluster-scoped, "default" when not given), name."""
    meta = data.get("metadata") or {}
    kind = str(data.get("kind", ""))
    namespace = "" if kind in CLUSTER_SCOPED else str(meta.get("namespace") or "default")
    return kind, namespace, str(meta.get("name", ""))


@dataclass
class LegacyObjects:
    seq: int = 0
    raw: dict[ObjectKey, dict[str, Any]] = field(default_factory=dict)
    salvaged: bool = False  # bytes were dropped (appended garbage, a torn last line)


def objects_files(state_dir: Path) -> list[Path]:
    return [p for p in (state_dir / OBJECTS_FILE, state_dir / OBJECTS_JOURNAL) if p.exists()]


def read_objects(state_dir: Path, mark: Mark | None) -> LegacyObjects:
    """The object store as the snapshot and journal hold it; DamagedFile when they are damaged
    or end before the witness's batch."""
    path, journal = state_dir / OBJECTS_FILE, state_dir / OBJECTS_JOURNAL
    data, salvaged = read_json_checked(path)
    if data is not None and not isinstance(data, (dict, list)):
        raise DamagedFile(path, "not a store snapshot")
    snapshot: dict[str, Any] = data if isinstance(data, dict) else {"seq": 0, "objects": data or []}
    found = LegacyObjects(salvaged=salvaged)
    try:
        found.seq = int(snapshot.get("seq", 0))
        for item in snapshot.get("objects", []):
            parse_object(item)
            found.raw[object_key(item)] = item
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DamagedFile(path, f"an object does not parse: {str(exc).splitlines()[0]}") from None
    found.salvaged = _replay_objects(journal, found) or found.salvaged
    if mark is not None and found.seq < mark.seq:
        if not path.exists() and not journal.exists():
            raise DamagedFile(path, f"missing, but the kernel's witness says {mark.seq} batches were stored")
        where = journal if journal.exists() or path.exists() else path
        raise DamagedFile(where, f"{'missing' if not where.exists() else 'cut short'}: the store ends at "
                                 f"batch {found.seq}, the kernel's witness says {mark.seq} were stored")
    return found


def _is_batch(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _replay_objects(journal: Path, found: LegacyObjects) -> bool:
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return False
    if not raw.strip():
        raise DamagedFile(journal, "empty")
    lines = raw.split(b"\n")
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if "key" in entry:  # a line of the format before batches had numbers
                changes, seq = [[entry["key"], entry.get("data")]], None
            else:
                changes, seq = entry["changes"], int(entry["seq"])
        except (ValueError, KeyError, TypeError):
            if any(_is_batch(rest) for rest in lines[number + 1:]):
                raise DamagedFile(journal, f"line {number + 1} is garbage and batches follow it") from None
            return True  # the torn tail of a batch that was never acknowledged
        if seq is not None and seq <= found.seq:
            continue  # already in the snapshot (a compaction interrupted before the removal)
        if seq is not None and seq != found.seq + 1:
            raise DamagedFile(journal.with_name(OBJECTS_FILE),
                              f"batches {found.seq + 1}..{seq - 1} are missing before the journal")
        try:
            for key_parts, data in changes:
                key = (str(key_parts[0]), str(key_parts[1]), str(key_parts[2]))
                if data is None:
                    found.raw.pop(key, None)
                else:
                    parse_object(data)
                    found.raw[key] = data
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise DamagedFile(journal, f"line {number + 1} does not parse: {str(exc).splitlines()[0]}") from None
        found.seq = seq if seq is not None else found.seq
    return False


# --- the Kubernetes-mode cluster cache -------------------------------------------------------
@dataclass
class LegacyCluster:
    version: int = 0
    stream_id: str = ""
    objects: dict[StateKey, StateObject] = field(default_factory=dict)


def cluster_files(state_dir: Path) -> list[Path]:
    return [p for p in (state_dir / CLUSTER_FILE, state_dir / CLUSTER_JOURNAL) if p.exists()]


def object_from_json(data: dict[str, Any]) -> StateObject:
    kind = Kind(data["kind"])
    if kind is Kind.NAMESPACE:
        return NamespaceState(data["name"], tuple((k, v) for k, v in data.get("labels", ())))
    if kind is Kind.NODE:
        return NodeState(data["name"], tuple(data.get("addresses", ())), data.get("pod_cidr", ""))
    if kind is Kind.IDENTITY:
        return IdentityState(int(data["id"]), tuple(data.get("labels", ())))
    if kind is Kind.ENDPOINT:
        return EndpointState(data["namespace"], data["name"], tuple(data.get("ips", ())), int(data.get("identity", 0)),
                             data.get("node_name", ""), tuple((k, v) for k, v in data.get("labels", ())),
                             tuple(NamedPortState(**p) for p in data.get("named_ports", ())), data.get("uid", ""))
    if kind is Kind.SERVICE:
        return ServiceState(
            data["namespace"], data["name"], data.get("type", "ClusterIP"), tuple(data.get("cluster_ips", ())),
            tuple(ServicePortState(**p) for p in data.get("ports", ())), tuple(data.get("external_ips", ())),
            tuple(data.get("load_balancer_ips", ())), int(data.get("affinity_timeout", 0)),
            bool(data.get("external_traffic_local")), bool(data.get("internal_traffic_local")),
            int(data.get("health_check_node_port", 0)))
    if kind is Kind.ENDPOINTSLICE:
        return EndpointSliceState(
            data["namespace"], data["name"], data.get("service", ""), data.get("address_type", "IPv4"),
            tuple(EndpointPortState(**p) for p in data.get("ports", ())),
            tuple(SliceEndpointState(**{**e, "addresses": tuple(e.get("addresses", ())),
                                        "hint_zones": tuple(e.get("hint_zones", ()))})
                  for e in data.get("endpoints", ())))
    if kind is Kind.PACKET_FILTER:
        return PacketFilterState(data["name"], int(data.get("generation", 0)), data.get("spec_json", ""))
    if kind is Kind.CIDR_DENY_LIST:
        return CIDRDenyListState(data["name"], int(data.get("generation", 0)), tuple(data.get("cidrs", ())))
    if kind is Kind.POLICY:
        return PolicyState(data["namespace"], data["name"], data.get("object_json", ""))
    raise ValueError(f"kind {kind.value} was never in the JSON cache")


def read_cluster(state_dir: Path) -> LegacyCluster:
    """The cache as base + journal hold it (the journal up to its first torn or
    non-consecutive line); DamagedFile when the base is damaged."""
    base, journal = state_dir / CLUSTER_FILE, state_dir / CLUSTER_JOURNAL
    saved, _ = read_json_checked(base)
    if saved is not None and not isinstance(saved, dict):
        raise DamagedFile(base, "not a cluster state")
    saved = saved or {}
    try:
        state = LegacyCluster(int(saved.get("version", 0)), str(saved.get("stream_id", "")))
        for data in saved.get("objects", []):
            obj = object_from_json(data)
            state.objects[(obj.kind, obj.key)] = obj
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DamagedFile(base, f"an object does not parse: {exc}") from None
    try:
        lines = journal.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        try:
            entry = json.loads(line)
            version, stream_id = int(entry["version"]), str(entry["stream_id"])
            changes = [(Kind(kind), key, object_from_json(obj) if obj is not None else None)
                       for kind, key, obj in entry["changes"]]
        except (ValueError, KeyError, TypeError):
            log.warning("cluster journal: torn line ignored", extra={"fields": {"after": state.version}})
            break
        if stream_id == state.stream_id and version <= state.version:
            continue  # already in the base (a compaction interrupted before the truncate)
        if stream_id != state.stream_id or version != state.version + 1:
            break
        for kind, key, changed in changes:
            if changed is None:
                state.objects.pop((kind, key), None)
            else:
                state.objects[(kind, key)] = changed
        state.version = version
    return state
