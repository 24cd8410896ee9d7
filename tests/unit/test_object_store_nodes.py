"""Standalone mode's store takes Node objects: cluster-scoped, validated, persisted, announced."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from membrane.agent.api_serving import RequestError
from membrane.agent.object_store import ObjectKey, ObjectStore
from membrane.k8s_models import Node

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}, "spec": {"podCIDR": "10.1.2.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.2"}]}}


def test_node_is_cluster_scoped_and_survives_a_restart(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    store.load()
    heard: list[tuple[str, ObjectKey, BaseModel | None]] = []
    store.listeners.append(lambda kind, key, obj: heard.append((kind, key, obj)))
    assert store.apply([NODE]) == [{"kind": "Node", "namespace": "", "name": "n2", "action": "created"}]
    ((kind, key, obj),) = heard
    assert (kind, key) == ("Node", ("Node", "", "n2")) and isinstance(obj, Node)
    assert obj.tunnel_addresses == ("192.0.2.2",) and obj.pod_cidr_list == ("10.1.2.0/24",)
    again = ObjectStore(tmp_path)
    again.load(store.witness)  # the same kernel witness, as after an agent restart
    (restored,) = again.list("Node")
    assert restored == obj
    store.delete([NODE])
    assert heard[-1] == ("Node", ("Node", "", "n2"), None)


def test_a_bad_node_is_refused_with_its_field(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path)
    store.load()
    bad = {**NODE, "spec": {"podCIDR": "10.1.2.0/99"}}
    with pytest.raises(RequestError, match="spec.podCIDR"):
        store.apply([bad])
    assert store.list("Node") == []
