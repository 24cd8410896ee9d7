"""CIDRDenyLists streamed in chunks (membrane/prefilter_chunking.py): the bucket of a prefix is
the same in every process, a one-prefix edit is the list's head plus the one or two chunks it
touched, the chunks join back to the list across the wire, the agent's manager re-converts only
changed chunks and writes the LPM by difference, an older operator's whole-list record still
works, and the status counts a node as enforcing a generation only once it has all its chunks."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from ipaddress import IPv4Network
from typing import Any

from membrane.agent.prefilter_syncing import PrefilterManager
from membrane.api.state_codec import change_from_pb, change_to_pb
from membrane.api.state_objects import Change, CIDRDenyChunkState, CIDRDenyListState, Kind, StateObject
from membrane.operator.prefilter_status import PrefilterStatusBook
from membrane.operator.state_building import StateBuilder
from membrane.prefilter_chunking import BUCKETS, bucket_of, joined, split

from .test_prefilter_syncing import FakePrefilter


def prefixes(count: int) -> list[str]:
    return [f"100.{64 + i // 65536 % 64}.{i // 256 % 256}.{i % 256}/32" for i in range(count)]


def deny_list(cidrs: list[str], generation: int = 1, name: str = "bad") -> dict[str, Any]:
    return {"apiVersion": "membrane.io/v1alpha1", "kind": "CIDRDenyList",
            "metadata": {"name": name, "generation": generation}, "spec": {"cidrs": cidrs}}


def test_the_bucket_is_a_stable_hash_not_pythons() -> None:
    assert bucket_of("10.0.0.0/8") == zlib.crc32(b"10.0.0.0/8") % BUCKETS
    here = [bucket_of(c) for c in prefixes(50)]
    code = ("from membrane.prefilter_chunking import bucket_of; from tests.unit.test_prefilter_chunking import "
            "prefixes; print([bucket_of(c) for c in prefixes(50)])")
    for seed in ("1", "2"):  # Python's own str hash differs per seed; the bucket must not
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert out.strip() == str(here)
    assert len({bucket_of(c) for c in prefixes(10_000)}) == BUCKETS  # every bucket used


def test_split_and_join_round_trip_through_the_wire() -> None:
    cidrs = prefixes(3_000) + ["10.0.0.0/8"]
    head, chunks = split("bad", 4, cidrs)
    assert (head.name, head.generation, head.cidrs) == ("bad", 4, ()) and head.digest
    assert len(chunks) == BUCKETS and all(len(c.cidrs) < 3_001 // 20 for c in chunks)
    wire = [change_from_pb(change_to_pb(Change((o.kind, o.key), o))).obj for o in [head, *chunks]]
    assert wire == [head, *chunks]
    got_head, *got_chunks = wire
    assert isinstance(got_head, CIDRDenyListState)
    assert sorted(joined(got_head, [c for c in got_chunks if isinstance(c, CIDRDenyChunkState)])) == sorted(cidrs)
    delete = change_from_pb(change_to_pb(Change((Kind.CIDR_DENY_CHUNK, "bad/17"), None)))
    assert delete == Change((Kind.CIDR_DENY_CHUNK, "bad/17"), None)
    assert split("bad", 5, list(reversed(cidrs)))[0].digest != head.digest  # the order is part of the list


def test_a_one_prefix_edit_is_the_head_and_one_chunk() -> None:
    builder = StateBuilder()
    cidrs = prefixes(10_000)
    builder.set_cidr_deny_list("bad", deny_list(cidrs))
    first = builder.take_changes()
    assert sum(1 for k in first if k[0] is Kind.CIDR_DENY_CHUNK) == BUCKETS
    added = "203.0.113.7/32"
    builder.set_cidr_deny_list("bad", deny_list([*cidrs, added], generation=2))
    delta = {k: v for k, v in builder.take_changes().items() if v != first.get(k)}
    assert set(delta) == {(Kind.CIDR_DENY_LIST, "bad"), (Kind.CIDR_DENY_CHUNK, f"bad/{bucket_of(added)}")}
    head = delta[(Kind.CIDR_DENY_LIST, "bad")]
    assert isinstance(head, CIDRDenyListState) and head.generation == 2
    chunk = delta[(Kind.CIDR_DENY_CHUNK, f"bad/{bucket_of(added)}")]
    assert isinstance(chunk, CIDRDenyChunkState) and chunk.cidrs[-1] == added
    wire = sum(len(change_to_pb(Change(k, v)).SerializeToString()) for k, v in delta.items())
    assert wire < 10_000 * 17 // 32  # a chunk's worth, not the 170 KB list
    # A list shrunk to one prefix drops its other chunks; a deleted list drops them all.
    builder.set_cidr_deny_list("bad", deny_list([added], generation=3))
    shrunk = builder.take_changes()
    assert sum(1 for k, v in shrunk.items() if k[0] is Kind.CIDR_DENY_CHUNK and v is None) == BUCKETS - 1
    assert {k for k in builder.state if k[0] is Kind.CIDR_DENY_CHUNK} == {(Kind.CIDR_DENY_CHUNK, f"bad/{bucket_of(added)}")}
    builder.set_cidr_deny_list("bad", None)
    assert builder.take_changes() == {(Kind.CIDR_DENY_LIST, "bad"): None,
                                      (Kind.CIDR_DENY_CHUNK, f"bad/{bucket_of(added)}"): None}
    assert not any(k[0] in (Kind.CIDR_DENY_LIST, Kind.CIDR_DENY_CHUNK) for k in builder.state)


class Stream:
    """What the operator's state log does with the builder's touched keys: only real changes."""

    def __init__(self, builder: StateBuilder) -> None:
        self.builder = builder
        self.sent: dict[Any, StateObject] = {}

    def changes(self) -> list[Change]:
        out = []
        for key, obj in sorted(self.builder.take_changes().items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
            if self.sent.get(key) != obj:
                out.append(Change(key, obj))
                if obj is None:
                    self.sent.pop(key, None)
                else:
                    self.sent[key] = obj
        return out


def feed(manager: PrefilterManager, stream: Stream) -> None:
    for change in stream.changes():
        manager.on_update(change.key[0], change.key[1], change.obj)


def test_the_manager_reconverts_only_changed_chunks_and_writes_the_difference() -> None:
    port = FakePrefilter(cidr_capacity=20_000)
    manager = PrefilterManager(port)
    builder = StateBuilder()
    stream = Stream(builder)
    cidrs = prefixes(5_000)
    builder.set_cidr_deny_list("bad", deny_list(cidrs))
    feed(manager, stream)
    assert manager.apply()["prefixes"] == 5_000
    ref = manager.refs[("denylist", "bad")]
    assert port.cidr == {IPv4Network(c): ref for c in cidrs}
    before = dict(manager.deny_chunks["bad"])
    replaced, added = cidrs[123], "203.0.113.9/32"
    builder.set_cidr_deny_list("bad", deny_list([c for c in cidrs if c != replaced] + [added], generation=2))
    feed(manager, stream)
    changed = {b for b, p in manager.deny_chunks["bad"].items() if p is not before.get(b)}
    assert changed == {bucket_of(replaced), bucket_of(added)}  # the others kept their converted sets
    port.log.clear()
    assert manager.apply()["prefixes"] == 2
    assert port.log == ["cidr+1", "cidr-1"]
    assert IPv4Network(added) in port.cidr and IPv4Network(replaced) not in port.cidr
    builder.set_cidr_deny_list("bad", None)
    feed(manager, stream)
    manager.apply()
    assert port.cidr == {} and manager.deny_chunks == {}


def test_an_older_operators_whole_list_record_is_replaced_by_chunks() -> None:
    port = FakePrefilter()
    manager = PrefilterManager(port)
    manager.on_update(Kind.CIDR_DENY_LIST, "bad", CIDRDenyListState("bad", 1, ("10.0.0.0/8", "192.0.2.0/24")))
    manager.apply()
    assert set(port.cidr) == {IPv4Network("10.0.0.0/8"), IPv4Network("192.0.2.0/24")}
    builder = StateBuilder()  # a newer operator's snapshot: head without prefixes, then chunks
    builder.set_cidr_deny_list("bad", deny_list(["10.0.0.0/8", "198.51.100.0/24"], generation=2))
    feed(manager, Stream(builder))
    manager.apply()
    assert set(port.cidr) == {IPv4Network("10.0.0.0/8"), IPv4Network("198.51.100.0/24")}


def test_status_counts_a_generation_once_all_its_chunks_are_acked() -> None:
    builder = StateBuilder()
    stream = Stream(builder)
    book = PrefilterStatusBook()
    cidrs = prefixes(1_000)
    builder.set_cidr_deny_list("bad", deny_list(cidrs))
    book.committed(1, stream.changes())
    builder.set_cidr_deny_list("bad", deny_list(cidrs + ["203.0.113.1/32"], generation=2))
    book.committed(2, stream.changes())
    key = (Kind.CIDR_DENY_LIST, "bad")
    status = book.enforcement(key, ["a", "b", "c"], {"a": 2, "b": 1})
    assert status["enforced"] == "1/3"
    assert status["nodesByGeneration"] == [{"generation": 2, "nodes": 1}, {"generation": 1, "nodes": 1}]
    assert status["enforcedGeneration"] is None
    # A content change without a new generation (a stand-in API) still moves the head: acks of
    # the older version do not count as enforcing the current contents.
    builder.set_cidr_deny_list("bad", deny_list(cidrs, generation=2))
    changes = stream.changes()
    assert {c.key[0] for c in changes} == {Kind.CIDR_DENY_LIST, Kind.CIDR_DENY_CHUNK}
    book.committed(3, changes)
    assert book.enforcement(key, ["a"], {"a": 2})["enforced"] == "0/1"
    assert book.enforcement(key, ["a"], {"a": 3})["enforced"] == "1/1"
