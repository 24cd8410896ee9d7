"""Fixtures for privileged tests: lab nodes (namespaces running a real agent) and a "world"
namespace behind the node's uplink. Everything is removed even when a test fails."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from membrane_testkit.lab import probes
from membrane_testkit.lab.node import LabNode

_counter = itertools.count()


@pytest.fixture
def make_node() -> Iterator[Any]:
    nodes: list[LabNode] = []

    def make(pod_cidr: str = "10.200.1.0/24", start: bool = True, **kwargs: Any) -> LabNode:
        node = LabNode(f"n{os.getpid() % 10000}x{next(_counter)}", pod_cidr=pod_cidr, **kwargs)
        nodes.append(node)
        node.create()
        if start:
            node.start_agent()
        return node

    yield make
    for node in nodes:
        node.destroy()


@pytest.fixture
def node(make_node: Any) -> LabNode:
    return make_node()  # type: ignore[no-any-return]


@pytest.fixture
def world(node: LabNode) -> Iterator[str]:
    with probes.world(node) as name:
        yield name
