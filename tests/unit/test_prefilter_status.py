"""What the operator writes in a PacketFilter's status: which generation each node enforces,
from the versions that carried each generation and the nodes' acks."""

from __future__ import annotations

from membrane.api.state_objects import Change, Kind, PacketFilterState
from membrane.k8s_models import FieldError
from membrane.operator.prefilter_status import HISTORY, PrefilterStatusBook, differs, status

KEY = (Kind.PACKET_FILTER, "cve")


def commit(book: PrefilterStatusBook, version: int, generation: int | None) -> None:
    obj = PacketFilterState("cve", generation) if generation is not None else None
    book.committed(version, [Change(KEY, obj)])


def test_each_node_enforces_the_newest_generation_its_ack_covers() -> None:
    book = PrefilterStatusBook()
    commit(book, 3, 1)
    commit(book, 7, 2)
    nodes = ["a", "b", "c", "d"]
    got = book.enforcement(KEY, nodes, {"a": 9, "b": 7, "c": 5, "x": 100})  # d never acked; x is no Node
    assert got == {"enforced": "2/4", "enforcedGeneration": None,
                   "nodesByGeneration": [{"generation": 2, "nodes": 2}, {"generation": 1, "nodes": 1}]}
    got = book.enforcement(KEY, nodes, {"a": 9, "b": 7, "c": 5, "d": 3})
    assert got["enforcedGeneration"] == 1 and got["enforced"] == "2/4"
    assert book.enforcement(KEY, nodes, dict.fromkeys(nodes, 7))["enforcedGeneration"] == 2
    assert book.enforcement(KEY, [], {})["enforced"] == "0/0"


def test_a_filter_left_out_of_the_stream_is_enforced_nowhere() -> None:
    book = PrefilterStatusBook()
    commit(book, 3, 1)
    commit(book, 4, None)  # became invalid (or was deleted)
    assert book.enforcement(KEY, ["a"], {"a": 10}) == {"enforced": "0/1", "enforcedGeneration": None,
                                                       "nodesByGeneration": []}
    commit(book, 5, 3)
    assert book.enforcement(KEY, ["a"], {"a": 4})["enforced"] == "0/1"  # the old one is no longer there
    assert book.enforcement(KEY, ["a"], {"a": 5})["enforcedGeneration"] == 3


def test_history_is_bounded() -> None:
    book = PrefilterStatusBook()
    for generation in range(1, HISTORY + 5):
        commit(book, generation * 10, generation)
    # A node whose ack predates every remembered generation enforces none of them.
    assert book.enforcement(KEY, ["a"], {"a": 10})["nodesByGeneration"] == []
    assert book.enforcement(KEY, ["a"], {"a": 10 * (HISTORY + 4)})["enforcedGeneration"] == HISTORY + 4


def test_status_keeps_the_transition_time_while_the_condition_holds() -> None:
    obj = {"metadata": {"name": "cve", "generation": 4}}
    first = status(obj, [], {"enforced": "1/1"}, "2026-01-01T00:00:00Z")
    assert first["conditions"][0]["status"] == "True" and first["observedGeneration"] == 4
    later = status({**obj, "status": first}, [], {"enforced": "1/1"}, "2026-02-02T00:00:00Z")
    assert later["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert not differs(first, later)
    broken = status({**obj, "status": first}, [FieldError("spec.rules[0].source", "host bits set")], {}, "t2")
    assert broken["conditions"][0] == {"type": "Accepted", "status": "False", "reason": "Invalid",
                                       "message": "spec.rules[0].source: host bits set", "observedGeneration": 4,
                                       "lastTransitionTime": "t2"}
    assert differs(first, broken)
    assert not differs({**first, "enforcedGeneration": None}, first)  # null is what a merge patch removes
