"""Security identities: label derivation, number space, allocator rules and persistence."""

from __future__ import annotations

import json

import pytest

from membrane.identities import (
    CLUSTER_IDENTITY_MAX,
    CLUSTER_IDENTITY_MIN,
    LOCAL_IDENTITY_FLAG,
    IdentitiesExhausted,
    IdentityAllocator,
    LabelSet,
    ReservedIdentity,
    cidr_allocator,
    cidr_labels,
    identity_labels,
    is_cluster,
    is_local,
    is_reserved,
    reserved_labels,
)


def test_reserved_numbers() -> None:
    assert [int(r) for r in ReservedIdentity] == [1, 2, 3, 4, 5, 6, 7]
    assert ReservedIdentity.KUBE_APISERVER == 7
    assert reserved_labels(ReservedIdentity.REMOTE_NODE).to_strings() == ["reserved:remote-node"]
    assert all(is_reserved(r) for r in ReservedIdentity)


def test_number_space() -> None:
    assert CLUSTER_IDENTITY_MIN == 256 and CLUSTER_IDENTITY_MAX == 2**24 - 1
    assert is_cluster(256) and is_cluster(2**24 - 1) and not is_cluster(2**24)
    assert is_local(LOCAL_IDENTITY_FLAG | 5) and not is_local(2**24 - 1)
    local = cidr_allocator().acquire(cidr_labels("10.0.0.0/8"), "p")
    assert is_local(local) and local < 2**32


def test_identity_labels_drop_per_pod_labels_and_add_namespace() -> None:
    labels = identity_labels(
        {
            "app": "web",
            "pod-template-hash": "abc",
            "controller-revision-hash": "1",
            "statefulset.kubernetes.io/pod-name": "web-0",
            "pod-template-generation": "3",
        },
        "prod",
        {"team": "a"},
    )
    assert labels.to_strings() == [
        "k8s:app=web",
        "meta:namespace=prod",
        "ns:kubernetes.io/metadata.name=prod",
        "ns:team=a",
    ]
    assert labels.pod_labels == {"app": "web"}
    assert labels.namespace_labels == {"team": "a", "kubernetes.io/metadata.name": "prod"}
    assert labels.namespace == "prod"


def test_same_role_different_rollout_same_labels() -> None:
    a = identity_labels({"app": "web", "pod-template-hash": "1"}, "prod", {})
    b = identity_labels({"app": "web", "pod-template-hash": "2"}, "prod", {})
    assert a == b and hash(a) == hash(b)
    assert a != identity_labels({"app": "web"}, "dev", {})
    assert a != identity_labels({"app": "web"}, "prod", {"x": "y"})


def test_sources_cannot_be_forged_by_pod_labels() -> None:
    # A pod label named like a namespace label still lands under the pod source.
    a = identity_labels({"team": "a"}, "prod", {})
    b = identity_labels({}, "prod", {"team": "a"})
    assert a != b


def test_label_set_round_trip() -> None:
    labels = identity_labels({"app": "web", "empty": ""}, "prod", {})
    assert LabelSet.from_strings(labels.to_strings()) == labels
    assert cidr_labels("10.1.2.3/8").to_strings() == ["cidr:10.0.0.0/8"]


def L(**labels: str) -> LabelSet:
    return identity_labels(labels, "ns", {})


def test_same_labels_same_number_different_labels_different() -> None:
    alloc = IdentityAllocator()
    a = alloc.acquire(L(app="a"), "ns/p1")
    assert a == 256
    assert alloc.acquire(L(app="a"), "ns/p2") == a
    b = alloc.acquire(L(app="b"), "ns/p3")
    assert b == 257
    assert alloc.lookup(L(app="b")) == b and alloc.labels_of(a) == L(app="a")
    assert alloc.owners_of(a) == {"ns/p1", "ns/p2"}


def test_acquire_is_idempotent_per_owner() -> None:
    alloc = IdentityAllocator()
    a = alloc.acquire(L(app="a"), "ns/p1")
    alloc.acquire(L(app="a"), "ns/p1")
    assert alloc.release(L(app="a"), "ns/p1") == a  # one release frees it
    assert alloc.release(L(app="a"), "ns/p1") is None


def test_release_keeps_number_during_grace_then_gc_frees() -> None:
    alloc = IdentityAllocator(grace=30.0)
    a = alloc.acquire(L(app="a"), "ns/p1")
    alloc.acquire(L(app="a"), "ns/p2")
    assert alloc.release(L(app="a"), "ns/p1", now=100) is None  # still owned
    assert alloc.release(L(app="a"), "ns/p2", now=100) == a
    assert alloc.gc(now=110) == []
    # Re-created within grace: same number again.
    assert alloc.acquire(L(app="a"), "ns/p3") == a
    alloc.release(L(app="a"), "ns/p3", now=120)
    assert alloc.gc(now=150) == [a]
    assert alloc.lookup(L(app="a")) is None and len(alloc) == 0


def test_freed_numbers_are_not_reused_before_range_is_exhausted() -> None:
    alloc = IdentityAllocator(first=256, last=259)
    ids = [alloc.acquire(L(app=str(i)), f"o{i}") for i in range(3)]
    assert ids == [256, 257, 258]
    alloc.release(L(app="0"), "o0")
    alloc.release(L(app="1"), "o1")
    assert alloc.gc() == [256, 257]
    assert alloc.acquire(L(app="x"), "ox") == 259  # never-used numbers first
    assert alloc.acquire(L(app="y"), "oy") == 256  # then the oldest freed
    assert alloc.acquire(L(app="z"), "oz") == 257
    with pytest.raises(IdentitiesExhausted):
        alloc.acquire(L(app="w"), "ow")


def test_state_round_trips_and_restored_allocator_gives_same_numbers() -> None:
    alloc = IdentityAllocator(grace=10)
    a = alloc.acquire(L(app="a"), "ns/p1")
    b = alloc.acquire(L(app="b"), "ns/p2")
    alloc.acquire(L(app="c"), "ns/p3")
    alloc.release(L(app="c"), "ns/p3", now=5)
    alloc.gc(now=20)
    state = json.loads(json.dumps(alloc.to_dict()))  # must be JSON-serialisable
    restored = IdentityAllocator.from_dict(state)
    assert restored.to_dict() == alloc.to_dict()
    assert restored.acquire(L(app="a"), "ns/p9") == a
    assert restored.lookup(L(app="b")) == b
    # Next new identity is the same one the original would have handed out.
    assert restored.acquire(L(app="d"), "x") == alloc.acquire(L(app="d"), "x")


def test_corrupt_state_is_rejected() -> None:
    alloc = IdentityAllocator()
    alloc.acquire(L(app="a"), "o")
    state = alloc.to_dict()
    state["identities"].append(dict(state["identities"][0]))
    with pytest.raises(ValueError, match="duplicate"):
        IdentityAllocator.from_dict(state)
    with pytest.raises(ValueError, match="version"):
        IdentityAllocator.from_dict({"version": 99})
    state = alloc.to_dict()
    state["free"] = [256]
    with pytest.raises(ValueError, match="both free and in use"):
        IdentityAllocator.from_dict(state)


def test_cidr_identities_are_local_and_distinct_from_cluster() -> None:
    cluster = IdentityAllocator()
    local = cidr_allocator()
    c = cluster.acquire(L(app="a"), "o")
    lid = local.acquire(cidr_labels("10.0.0.0/8"), "policy")
    assert lid == LOCAL_IDENTITY_FLAG | 1 and lid != c
    assert local.acquire(cidr_labels("10.0.0.0/8"), "other") == lid
